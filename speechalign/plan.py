"""`speechalign plan`: what a round of the configured campaign takes, worked out before it runs, without its weights.

    model shape     the model is built on PyTorch's meta device from its config.json (the work directory's base
                    model, [model] base_model, or the demo's knobs): parameters, LoRA's trainable ones, and the
                    embedding and output layers when they train too (modules_to_save)
    disk a round    its LoRA adapter (saved, and logged to MLflow once), its held-out, probe and decoded candidate
                    WAVs, the audio MLflow plays; the merged policy is the whole model, and the work directory keeps
                    two at most (the last round's and the champion's: campaign.keep_policies)
    peak memory     training: the frozen weights in the training dtype, the trainable parameters with their
                    gradients and Adam's two moments in fp32, the activations of a step's sequences (about 34 bytes
                    per token, layer and hidden unit without gradient checkpointing, 2 with it) and the fp32 logits;
                    generation: the weights in the inference dtype and the KV cache of a batch (models/precision.py
                    decides both dtypes)
    token budget    the corpus's longest utterance (the store's, once imported; before, corpus.max_seconds at the
                    codec's frame rate) against generate.max_new_tokens, train.max_length and the model's positions

Estimates, to the first digit: a plan tells a 7B campaign that will not fit from one that will.
Bootstrap runs the token budget's check on the corpus it imports (`check_token_budget`) and fails naming the
utterance and the knob, instead of letting training cut it silently.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from speechalign.config import Config
from speechalign.errors import SetupError
from speechalign.models.codecs import codec_flattening
from speechalign.models.precision import decide_precision

ACTIVATION_BYTES = 34  # per token, layer and hidden unit in 16-bit, no recomputation (Korthikanti et al. 2022)
CHECKPOINTED_BYTES = 2  # with gradient checkpointing: each layer's input only
ADAM_BYTES = 16  # a trainable fp32 parameter, its gradient and two moments
WAV_BYTES_PER_SECOND = 2  # 16-bit PCM, per sample
CODEC_RATES = (16000, 50)  # the demo codec's sample rate and frame rate, when no codec is loaded to ask


@dataclass(frozen=True)
class Shape:
    source: str
    parameters: int
    lora: int  # LoRA's trainable parameters
    saved_modules: int  # embedding and output layers trained in full (0 when they do not train)
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    vocabulary: int
    positions: int


def model_config(cfg: Config):
    """The model's transformers config: the work directory's base model, your model's directory (config.json only is
    read), or the demo model's, built from the [model] knobs."""
    from transformers import AutoConfig  # noqa: PLC0415

    for where in (cfg.layout.base_model, Path(cfg.model.base_model) if cfg.model.base_model else None):
        if where is not None and (where / "config.json").is_file():
            return AutoConfig.from_pretrained(where), str(where)
    from speechalign.models.codec_lm import build_demo_tokenizer, demo_config  # noqa: PLC0415

    m = cfg.model
    tokenizer = build_demo_tokenizer(1024, ["en-us+m3", "en-gb+f3"])
    return demo_config(tokenizer, m.layers, m.hidden_size, m.heads, m.max_positions), "the demo model's knobs"


def model_shape(cfg: Config) -> Shape:
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    config, source = model_config(cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    t = cfg.train
    targets = None if t.target_modules == ["all-linear"] else set(t.target_modules)
    output = model.get_output_embeddings()
    lora = sum(t.lora_r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and m is not output
               and (targets is None or name.split(".")[-1] in targets))
    saved = 0
    if embeddings_train(cfg):
        modules = {id(model.get_input_embeddings()): model.get_input_embeddings(), id(output): output}
        saved = sum(p.numel() for m in modules.values() for p in m.parameters())
    heads = config.num_attention_heads
    return Shape(source, sum(p.numel() for p in model.parameters()), lora, saved, config.num_hidden_layers,
                 config.hidden_size, getattr(config, "num_key_value_heads", None) or heads,
                 getattr(config, "head_dim", None) or config.hidden_size // heads, config.vocab_size,
                 getattr(config, "max_position_embeddings", 0))


def embeddings_train(cfg: Config) -> bool:
    """train.train_embeddings as the train stage will resolve it (auto: speech tokens added, and no SFT)."""
    if cfg.train.train_embeddings != "auto":
        return cfg.train.train_embeddings == "true"
    metadata = cfg.layout.base_model / "speechalign.json"
    if metadata.is_file():
        found = json.loads(metadata.read_text())
        return found.get("added_tokens", 0) > 0 and not found.get("sft")
    return bool(cfg.model.base_model) and cfg.model.sft_epochs == 0  # your model, as it is: added tokens train


@dataclass(frozen=True)
class Corpus:
    longest_utterance: str
    longest_units: int
    longest_prompt_tokens: int
    mean_seconds: float
    from_store: bool


def corpus_figures(cfg: Config, store=None) -> Corpus:
    prompts = store.prompts() if store is not None else []
    k = codec_flattening(cfg.codec).codebooks  # units a frame: the LM speaks k codebooks interleaved
    if not prompts:
        sample_rate, frame_rate = CODEC_RATES
        units = math.ceil(cfg.corpus.max_seconds * frame_rate) * k
        return Corpus(f"an utterance of corpus.max_seconds = {cfg.corpus.max_seconds}", units, 200,
                      cfg.corpus.max_seconds / 2, False)
    tokens = prompt_tokens(cfg)
    longest = max(prompts, key=lambda p: (len(p.golden_tokens[0]), p.id))
    return Corpus(longest.utterance_id, len(longest.golden_tokens[0]) * k, max(tokens(p) for p in prompts),
                  sum(p.duration_s for p in prompts) / len(prompts), True)


def prompt_tokens(cfg: Config):
    """A prompt's length in tokens: the base model's tokenizer where there is one, else a character a token (the
    demo's tokenizer)."""
    from speechalign.models.codec_lm import speech_format  # noqa: PLC0415

    fmt = speech_format(cfg.model)
    for where in (cfg.layout.base_model, Path(cfg.model.base_model) if cfg.model.base_model else None):
        if where is not None and (where / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer  # noqa: PLC0415

            tokenizer = AutoTokenizer.from_pretrained(where)
            return lambda p: len(tokenizer(fmt.prompt(p.text, p.speaker, tokenizer), add_special_tokens=False)
                                 ["input_ids"])
    return lambda p: len(p.text) + 2  # characters, a speaker token, speech_start


def budget_problems(cfg: Config, corpus: Corpus, positions: int) -> list[str]:
    """What would cut the longest utterance: each knob too small for it, with the size it needs."""
    units, prompt = corpus.longest_units, corpus.longest_prompt_tokens
    checks = [("generate.max_new_tokens", cfg.generate.max_new_tokens, units + 1,
               "its samples would stop before its length"),
              ("train.max_length", cfg.train.max_length, prompt + units + 1, "training would cut its golden units"),
              ("the model's positions (model.max_positions for the demo model)", positions, prompt + units + 1,
               "the model cannot read it whole")]
    return [f"utterance {corpus.longest_utterance}: {units} units after a {prompt}-token prompt need {knob} >= {need} "
            f"(it is {have}): {why}; raise it, or lower corpus.max_seconds to leave such utterances out"
            for knob, have, need, why in checks if have and have < need]


def check_token_budget(cfg: Config, store) -> None:
    """Bootstrap's check on the corpus it imported: fails naming the longest utterance and every knob too small."""
    if cfg.model.base_model or (cfg.layout.base_model / "config.json").is_file():
        positions = model_shape(cfg).positions
    else:
        positions = cfg.model.max_positions
    problems = budget_problems(cfg, corpus_figures(cfg, store), positions)
    if problems:
        raise SetupError("; ".join(problems))


def plan(cfg: Config, store=None) -> dict:
    shape, corpus = model_shape(cfg), corpus_figures(cfg, store)
    precision = decide_precision(cfg.model.dtype)
    inference, training = (precision.inference.itemsize, precision.training.itemsize)
    trainable = shape.lora + shape.saved_modules
    adapter = shape.lora * 4 + shape.saved_modules * training
    e, g, t = cfg.evaluate, cfg.generate, cfg.train
    heldout_samples = (100 if store is None else len(store.prompts("heldout"))) * (
        1 if e.mode == "greedy" else e.samples_per_prompt) + e.probe_prompts * e.samples_per_prompt
    seconds = corpus.mean_seconds * CODEC_RATES[0] * WAV_BYTES_PER_SECOND
    wavs = heldout_samples * seconds
    mlflow = adapter + 3 * 3 * seconds  # the adapter, and three held-out prompts' recording, golden tokens, sample
    sequence = corpus.longest_prompt_tokens + corpus.longest_units + 1
    if t.method == "grpo":
        sequences = cfg.online.num_generations * cfg.online.prompts_per_step
    else:
        sequences = 2 * t.batch_size  # a pair's chosen and rejected sides
    per_token = CHECKPOINTED_BYTES if t.gradient_checkpointing else ACTIVATION_BYTES
    activations = sequences * sequence * shape.layers * shape.hidden * per_token
    logits = sequences * sequence * shape.vocabulary * 4 * 2  # fp32 logits and their gradient
    training_peak = shape.parameters * training + trainable * ADAM_BYTES + activations + logits
    kv = g.batch_size * sequence * shape.layers * 2 * shape.kv_heads * shape.head_dim * inference
    generation_peak = shape.parameters * inference + kv + g.batch_size * shape.vocabulary * 4
    return {"model": asdict(shape), "precision": {"device": precision.device, "inference": str(precision.inference),
                                                  "training": str(precision.training), "autocast": precision.autocast},
            "corpus": asdict(corpus),
            "disk": {"adapter": adapter, "mlflow": mlflow, "wavs": wavs, "round": adapter + mlflow + wavs,
                     "merged_policy": shape.parameters * inference,
                     "merged_policies_kept": 1 if cfg.campaign.keep_policies == "last_and_champion" else None},
            "memory": {"training": training_peak, "training_weights": shape.parameters * training,
                       "trainable": trainable * ADAM_BYTES, "activations": activations, "logits": logits,
                       "generation": generation_peak, "kv_cache": kv},
            "budget": budget_problems(cfg, corpus, shape.positions)}


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_plan(p: dict) -> str:
    m, d, mem, c = p["model"], p["disk"], p["memory"], p["corpus"]
    kept = ("the last round's and the champion's: 2 at most" if d["merged_policies_kept"]
            else "every round's (campaign.keep_policies = all)")
    lines = [
        f"model ({m['source']}): {m['parameters'] / 1e6:,.1f} M parameters, {m['layers']} layers, hidden {m['hidden']},"
        f" vocabulary {m['vocabulary']:,}; LoRA trains {m['lora'] / 1e6:,.2f} M"
        + (f" and the embeddings {m['saved_modules'] / 1e6:,.1f} M" if m["saved_modules"] else ""),
        f"precision: {p['precision']['device']}, inference {p['precision']['inference']}, training loads "
        f"{p['precision']['training']}, autocast {p['precision']['autocast']}",
        f"disk a round adds: {size(d['round'])} (adapter {size(d['adapter'])}, MLflow {size(d['mlflow'])}, held-out "
        f"and probe WAVs {size(d['wavs'])}); a merged policy is {size(d['merged_policy'])}, and the work directory "
        f"keeps {kept}",
        f"peak memory: training {size(mem['training'])} (frozen weights {size(mem['training_weights'])}, trainable "
        f"with Adam {size(mem['trainable'])}, activations {size(mem['activations'])}, logits {size(mem['logits'])}); "
        f"generation {size(mem['generation'])} (KV cache {size(mem['kv_cache'])})",
        f"token budget: the longest utterance, {c['longest_utterance']}, has {c['longest_units']} units after a "
        f"{c['longest_prompt_tokens']}-token prompt" + ("" if c["from_store"] else " (no corpus imported yet)"),
    ]
    lines += [f"  too small: {problem}" for problem in p["budget"]] or ["  it fits every knob"]
    return "\n".join(lines)
