"""Where everything lives in a work directory: the one place that names its paths.

    <workdir>/
      config.toml                     the effective config (bootstrap writes it)
      store.db  mlflow.db  mlartifacts/
      corpus/                         the demo corpus (manifest.jsonl, wavs/) and repaired recordings
      models/base/  models/acoustic/  models/sft/
      campaigns/<campaign>/round-NNN/
        audio/<kind>/p<prompt>_<utterance>_k<k>.wav
        adapter/  policy/  dpo/  dpo-launch/
      vllm/                           generate.backend = "vllm": vllm-serve's state, its server's log, the adapters
                                      it serves (stacks of rounds' adapters; deletable while no round runs)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.toml"


def safe_name(name: str) -> str:
    """A name made safe for a file name (utterance ids come from users' manifests)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


@dataclass(frozen=True)
class Layout:
    workdir: Path
    campaign: str = "demo"

    @property
    def config_file(self) -> Path:
        return self.workdir / CONFIG_FILE

    @property
    def store_db(self) -> Path:
        return self.workdir / "store.db"

    @property
    def mlflow_db(self) -> Path:
        return self.workdir / "mlflow.db"

    @property
    def mlartifacts(self) -> Path:
        return self.workdir / "mlartifacts"

    @property
    def corpus(self) -> Path:
        return self.workdir / "corpus"

    @property
    def repaired_audio(self) -> Path:
        return self.corpus / "repaired"

    @property
    def base_model(self) -> Path:
        return self.workdir / "models" / "base"

    @property
    def acoustic(self) -> Path:
        return self.workdir / "models" / "acoustic"

    @property
    def sft_run(self) -> Path:
        return self.workdir / "models" / "sft"

    @property
    def vllm_dir(self) -> Path:
        return self.workdir / "vllm"

    @property
    def campaign_dir(self) -> Path:
        return self.workdir / "campaigns" / self.campaign

    def round_dir(self, number: int) -> Path:
        return self.campaign_dir / f"round-{number:03d}"

    def audio_file(self, number: int, kind: str, prompt_id: int, utterance_id: str, k: int) -> Path:
        return self.round_dir(number) / "audio" / kind / f"p{prompt_id}_{safe_name(utterance_id)[:80]}_k{k}.wav"

    def policy(self, number: int) -> Path:
        return self.round_dir(number) / "policy"

    def adapter(self, number: int) -> Path:
        return self.round_dir(number) / "adapter"

    def trainer_output(self, number: int) -> Path:
        return self.round_dir(number) / "dpo"

    def launch_dir(self, number: int) -> Path:
        return self.round_dir(number) / "dpo-launch"
