"""Every knob of a campaign, in one TOML file.

The defaults are the demo's. `speechalign config` prints the whole file; a user copies it, edits
what they need, and passes it with `--config`; `--set section.key=value` overrides one knob for
one command. Bootstrap writes the effective config into the work directory (`config.toml`), and
later commands on that work directory read it from there.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.toml"


@dataclass
class PathsConfig:
    workdir: str = "speechalign-work"


@dataclass
class StoreConfig:
    url: str = ""  # SQLAlchemy URL; empty: sqlite:///<workdir>/store.db
    auto_migrate: bool = True  # run Alembic to head when a command opens the store


@dataclass
class MlflowConfig:
    tracking_uri: str = ""  # empty: sqlite:///<workdir>/mlflow.db (the registry needs a database store)
    artifact_location: str = ""  # empty: <workdir>/mlartifacts, or the MLflow server's own when tracking_uri is http(s)
    registered_model: str = "speechalign-{campaign}"


@dataclass
class CorpusConfig:
    manifest: str = ""  # JSONL rows {"id", "text", "audio", "speaker"?}; empty: the demo corpus
    heldout_fraction: float = 0.12
    min_seconds: float = 0.3
    max_seconds: float = 20.0
    split_seed: int = 0


@dataclass
class DemoConfig:
    utterances: int = 400
    voices: list[str] = field(default_factory=lambda: ["en-us+m3", "en-gb+f3"])
    speed: int = 175
    seed: int = 0


@dataclass
class CodecConfig:
    config_path: str = ""  # SpeechTokenizer config.json; empty: the demo codec shipped in models/demo_codec
    checkpoint_path: str = ""  # its checkpoint (.pt state dict or .safetensors)
    encode_batch_size: int = 16
    acoustic: str = "model"  # model: the acoustic stage predicts RVQ layers 2..8 from layer 1; layer1_only: decode layer 1 alone
    acoustic_steps: int = 1000  # training steps of the acoustic stage at bootstrap (on the train split's golden tokens)
    decode_batch_size: int = 16


@dataclass
class ModelConfig:
    base_model: str = ""  # a Hugging Face causal-LM directory; empty: a small Llama built by bootstrap
    speaker_in_prompt: bool = True  # prefix prompts with a <spk:NAME> token when the corpus names speakers
    # the demo model (ignored when base_model is set)
    layers: int = 3
    hidden_size: int = 192
    heads: int = 6
    max_positions: int = 512
    seed: int = 0
    # supervised fine-tuning on the train split's golden tokens (0 epochs: take base_model as it is)
    sft_epochs: float = 8.0
    sft_learning_rate: float = 2e-3
    sft_batch_size: int = 16


@dataclass
class GenerateConfig:
    k: int = 4  # candidates per prompt
    prompts_per_round: int = 160  # 0: every train prompt; else a seeded subset, new each round
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 250
    batch_size: int = 64
    seed: int = 1234


@dataclass
class ScoreConfig:
    metrics: list[str] = field(default_factory=lambda: [  # on every golden, candidate and held-out sample
        "unit_edit_distance", "length_ratio", "policy_loglik", "dnsmos", "speaker_similarity"])
    heldout_metrics: list[str] = field(default_factory=lambda: ["asr"])  # on held-out samples only (slow ones)
    batch_size: int = 64  # samples per scoring call
    asr_model: str = ""  # a local Whisper-style checkpoint directory (transformers); empty: pocketsphinx's English model
    speechbertscore_model: str = ""  # a local HuBERT / WavLM directory (transformers) for the speechbertscore metric
    speechbertscore_layer: int = -1  # hidden layer whose features are compared (-1: the last)
    nisqa_weights: str = ""  # NISQA v2.0 weights (nisqa.tar) for the nisqa metric


@dataclass
class PairsConfig:
    criterion: str = "golden_vs_synthetic"  # golden_vs_synthetic | unanimous | single:<metric>
    metrics: list[str] = field(default_factory=lambda: [  # unanimous: chosen must beat rejected on every one
        "dnsmos_ovrl", "speaker_similarity", "unit_edit_distance"])
    margins: list[str] = field(default_factory=list)  # "metric=margin": by how much it must win (default 0: strictly)
    include_golden: bool = False  # unanimous / single: the golden sample competes as one more candidate
    max_pairs_per_prompt: int = 0  # 0: no cap
    human: str = "off"  # off | mix: also train on pairs from human listening judgments (speechalign listen)


@dataclass
class GuardConfig:
    """The collapse guard and the promotion gate (tasks/guard.py)."""

    action: str = "warn"  # when a round is flagged: warn | stop (the campaign) | refuse_promotion
    accuracy_limit: float = 0.95  # DPO reward accuracy at or above this is saturated
    margin_limit: float = 1.0  # DPO reward margin at or above this is inflated
    tolerances: list[str] = field(default_factory=lambda: [  # "metric=tolerance": how far a held-out metric may get worse
        "unit_edit_distance=0.02", "golden_nll=0.05", "policy_loglik=0.05", "dnsmos_ovrl=0.1", "dnsmos_sig=0.1",
        "dnsmos_bak=0.1", "speaker_similarity=0.02", "asr_cer=0.05", "asr_wer=0.05", "finished_rate=0.05"])
    default_tolerance: float = 0.05  # relative (5% of the reference value) for held-out metrics not listed
    champion_alias: str = "champion"  # MLflow alias of the best model so far; empty: never promote


@dataclass
class TrainConfig:
    learning_rate: float = 1e-4
    beta: float = 0.1
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid", "sft"])
    loss_weights: list[float] = field(default_factory=list)  # empty: 1.0 each
    epochs: float = 1.0
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    train_embeddings: str = "auto"  # auto: when bootstrap added speech tokens to a user's vocabulary
    reference: str = "previous"  # previous: last round's policy; initial: the campaign's base model
    precision: str = "auto"  # auto: bf16 on a GPU that supports it, else fp32
    seed: int = 0
    processes: int = 1  # > 1: data-parallel DPO in that many processes (`accelerate launch`, one per GPU)


@dataclass
class EvaluateConfig:
    mode: str = "greedy"  # sampled: fixed seeds, as generation samples; greedy: argmax decoding
    samples_per_prompt: int = 4
    seed: int = 4321


@dataclass
class CampaignConfig:
    name: str = "demo"
    rounds: int = 3
    lock_stale_seconds: float = 300.0  # a round lock without heartbeat this long is taken over (holder died)


@dataclass
class PrefectConfig:
    task_retries: int = 1
    retry_delay_seconds: int = 5


@dataclass
class ScaleConfig:
    """Where generation and scoring run: in the round's process, or fanned out over Dask workers."""

    runner: str = "local"  # local | dask (a Prefect DaskTaskRunner: prefect-dask)
    dask_address: str = ""  # a running Dask scheduler (tcp://host:8786); empty: a LocalCluster for the stage
    workers: int = 2  # LocalCluster worker processes
    shards: int = 0  # pieces each stage's work is cut into (whole batches); 0: one per worker
    torch_threads: int = 0  # torch threads in each worker; 0: this machine's cores / workers


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    campaign: CampaignConfig = field(default_factory=CampaignConfig)
    prefect: PrefectConfig = field(default_factory=PrefectConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)

    # ---- derived locations ------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        return Path(self.paths.workdir).resolve()

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.workdir / 'store.db'}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.workdir / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str | None:
        """Where new experiments keep artifacts: the configured place; with an MLflow server, the server's
        own (None: uploads go through it, `mlflow server --artifacts-destination`); else <workdir>/mlartifacts."""
        if self.mlflow.artifact_location:
            return self.mlflow.artifact_location
        if self.tracking_uri.startswith(("http://", "https://")):
            return None
        return (self.workdir / "mlartifacts").as_uri()

    @property
    def registered_model(self) -> str:
        return self.mlflow.registered_model.format(campaign=self.campaign.name)

    def codec_files(self) -> tuple[Path, Path]:
        """The codec's config.json and checkpoint: the configured ones, or the demo codec shipped in models/."""
        if self.codec.config_path or self.codec.checkpoint_path:
            return Path(self.codec.config_path), Path(self.codec.checkpoint_path)
        demo = Path(str(files("speechalign.models") / "demo_codec"))
        return demo / "config.json", demo / "model.safetensors"

    def campaign_dir(self) -> Path:
        return self.workdir / "campaigns" / self.campaign.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return to_toml(self.to_dict())


class ConfigError(ValueError):
    pass


CHOICES = {  # knobs with a fixed set of values, checked when the config is loaded
    ("evaluate", "mode"): ("sampled", "greedy"),
    ("train", "reference"): ("previous", "initial"),
    ("codec", "acoustic"): ("model", "layer1_only"),
    ("train", "precision"): ("auto", "bf16", "fp32"),
    ("train", "train_embeddings"): ("auto", "true", "false"),
    ("guard", "action"): ("warn", "stop", "refuse_promotion"),
    ("scale", "runner"): ("local", "dask"),
    ("pairs", "human"): ("off", "mix"),
}


def named_numbers(entries: list[str], knob: str) -> dict[str, float]:
    """["dnsmos_ovrl=0.1", ...] -> {"dnsmos_ovrl": 0.1}; each number >= 0."""
    out = {}
    for entry in entries:
        name, _, value = entry.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not name.strip() or number < 0:
            raise ValueError(f"{knob} entry {entry!r} is not metric=number with a number >= 0, e.g. dnsmos_ovrl=0.1")
        out[name.strip()] = number
    return out


def validate(config: Config, source: str) -> Config:
    for (section, key), allowed in CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in allowed:
            raise ConfigError(f"{source}: {section}.{key} = {value!r}; it can be {', '.join(map(repr, allowed))}")
    from speechalign.tasks.pairs import check_criterion  # noqa: PLC0415 - criteria live with the pairs stage
    try:
        check_criterion(config)
        named_numbers(config.guard.tolerances, "guard.tolerances")
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config


def from_dict(data: dict, base: Config | None = None, source: str = "config", check: bool = True) -> Config:
    """Overlay `data` ({section: {key: value}}) on `base` (default: the demo defaults), checking names and types."""
    config = base if base is not None else Config()
    for section, values in data.items():
        if not hasattr(config, section) or not isinstance(values, dict):
            raise ConfigError(f"{source}: unknown section [{section}]; sections are {', '.join(_sections())}")
        target = getattr(config, section)
        known = typing.get_type_hints(type(target))
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown key {section}.{key}; [{section}] has {', '.join(known)}")
            setattr(target, key, _coerce(value, known[key], f"{source}: {section}.{key}"))
    return validate(config, source) if check else config


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _coerce(value: Any, declared: Any, where: str) -> Any:
    """Accept `value` where it has the knob's declared type (ints are fine for floats; `a,b` for lists)."""
    if typing.get_origin(declared) is list:
        item_type = typing.get_args(declared)[0]
        if isinstance(value, str):  # --set k=a,b
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where} = {value!r} is not a list of {item_type.__name__}")
        if item_type is float:  # from --set k=1,5 the items arrive as strings
            value = [_number(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if declared is bool or isinstance(value, bool):
        ok = declared is bool and isinstance(value, bool)
    elif declared is float:
        ok, value = isinstance(value, (int, float)), float(value) if isinstance(value, (int, float)) else value
    else:
        ok = isinstance(value, declared)
    if not ok:
        raise ConfigError(f"{where} = {value!r} is not a {declared.__name__}")
    return value


def _number(value: Any, where: str) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where} = {value!r} is not a number") from None
    return value


def load_config(path: Path | None = None, overrides: list[str] | None = None, workdir: str | None = None) -> Config:
    """Defaults, then the work directory's config.toml (if any), then `path`, then --set overrides."""
    config = Config()
    if workdir:
        config.paths.workdir = workdir
    saved = config.workdir / CONFIG_FILE
    if saved.is_file():
        config = from_dict(_read(saved), config, str(saved))
        if workdir:
            config.paths.workdir = workdir
    if path:
        config = from_dict(_read(Path(path)), config, str(path))
        if workdir:
            config.paths.workdir = workdir
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set train.learning_rate=1e-4")
        dotted, raw = item.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        config = from_dict({section: {key: value}}, config, f"--set {item}", check=False)
    # knobs that depend on each other (a criterion and the metrics it ranks by) are checked once all are set
    return validate(config, "--set " + " ".join(overrides)) if overrides else config


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def to_toml(data: dict) -> str:
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def save_config(config: Config) -> Path:
    config.workdir.mkdir(parents=True, exist_ok=True)
    path = config.workdir / CONFIG_FILE
    path.write_text(config.to_toml())
    return path
