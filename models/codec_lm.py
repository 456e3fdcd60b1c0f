"""The codec language model: a Hugging Face causal LM that reads text and speaks codec units.

How speech is written is the model's `SpeechFormat`, kept in its metadata:
- units: `unit_token` with the code in it: the demo's `<u12>`, a SpeechGPT-style vocabulary's `<12>`;
- `speech_start` and `speech_end` around them (`<sosp>` ... `<eosp>`);
- the prompt: `prompt_template` with {text}, {speaker} (a `<spk:NAME>` token, or nothing) and {speech_start},
  the demo's `{speaker}{text}{speech_start}`, SpeechGPT's `[Human]: {text}<eoh> [SpeechGPT]: {speech_start}`;
  or "chat_template": the tokenizer's own chat template around the text, then speech_start; or
  "chat_template:<user message>", the user message a format string with {text} and {speaker} (Llasa's
  "chat_template:Convert the text to speech:<|TEXT_UNDERSTANDING_START|>{text}<|TEXT_UNDERSTANDING_END|>");
  {phonemes} in place of {text} writes the text as espeak-ng's IPA (NeuTTS reads phonemes, not letters);
- `deduplicate`: runs of a repeated unit written once, for models trained on deduplicated units.
The prompt is everything up to and including speech_start; the completion is the units and speech_end.

Two ways in, one code path out:
- the demo builds a character-level WordLevel tokenizer and a small Llama from scratch;
- a user's HF model directory is loaded as is, and whatever speech tokens its vocabulary lacks are added
  (`ensure_speech_vocabulary`): none when its format is configured to match.
"""

from __future__ import annotations

import gc
import json
import os
import re
import string
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache
from itertools import groupby
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from speechalign.models.precision import Precision, decide_precision

PAD, UNK = "<pad>", "<unk>"
TEXT_SYMBOLS = list(string.ascii_lowercase + string.digits + " .,?!'-:;\"")
METADATA_FILE = "speechalign.json"
CHAT_TEMPLATE = "chat_template"


@dataclass(frozen=True)
class SpeechFormat:
    unit_token: str = "<u{}>"
    speech_start: str = "<sosp>"
    speech_end: str = "<eosp>"
    prompt_template: str = "{speaker}{text}{speech_start}"
    deduplicate: bool = False
    speaker_in_prompt: bool = True

    def unit(self, code: int) -> str:
        return self.unit_token.format(int(code))

    @cached_property
    def unit_pattern(self) -> re.Pattern:
        before, _, after = self.unit_token.partition("{}")
        return re.compile(re.escape(before) + r"(\d+)" + re.escape(after))

    def code(self, token: str | None) -> int | None:
        """The unit a token writes, or None."""
        match = self.unit_pattern.fullmatch(token or "")
        return int(match.group(1)) if match else None

    def units(self, units: list[int]) -> list[int]:
        """The units as the model reads and writes them (deduplicated when the format says so)."""
        return [u for u, _ in groupby(units)] if self.deduplicate else list(units)

    def completion(self, units: list[int]) -> str:
        return "".join(self.unit(u) for u in self.units(units)) + self.speech_end

    def prompt(self, text: str, speaker: str | None, tokenizer: PreTrainedTokenizerBase | None = None) -> str:
        """The prompt for `text`. With a chat template, the user message is rendered by the tokenizer's template
        with its generation prompt (the assistant's header), and speech_start follows: for Llama 3's template this
        is what Llasa's `apply_chat_template(..., continue_final_message=True)` makes of an assistant message
        holding speech_start."""
        spk = speaker_token(speaker) if speaker and self.speaker_in_prompt else ""
        template = self.prompt_template
        fields = {"speaker": spk, "speech_start": self.speech_start, "text": text.strip()}
        if "{phonemes}" in template:
            fields["phonemes"] = phonemes(text.strip())
        if template == CHAT_TEMPLATE or template.startswith(CHAT_TEMPLATE + ":"):
            if tokenizer is None or not getattr(tokenizer, "chat_template", None):
                raise ValueError("model.prompt_template = \"chat_template\", but the tokenizer has no chat_template; "
                                 "write the prompt as a format string with {text} and {speech_start} instead")
            user = template.removeprefix(CHAT_TEMPLATE + ":").format(**fields) if template != CHAT_TEMPLATE \
                else spk + fields["text"]
            chat = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                 add_generation_prompt=True)
            return chat + self.speech_start
        return template.format(**fields)

    def speech_tokens(self, codebook_size: int, speakers: list[str] = ()) -> list[str]:
        """Every token the format needs in a vocabulary."""
        spk = sorted({speaker_token(s) for s in speakers}) if self.speaker_in_prompt else []
        return [self.speech_start, self.speech_end, *spk, *(self.unit(i) for i in range(codebook_size))]


DEMO_FORMAT = SpeechFormat()


@lru_cache(maxsize=65536)
def phonemes(text: str, voice: str = "en-us") -> str:
    """`text` as espeak-ng's IPA with stress marks, words separated by one space (the `{phonemes}` of a prompt
    template). NeuTTS's own front end is the phonemizer package on the same espeak-ng (en-us, stress marks,
    punctuation kept); espeak-ng's command line drops the punctuation, so a clause break is all that marks it."""
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("{phonemes} in model.prompt_template needs espeak-ng (Debian package espeak-ng)")
    out = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", voice, "--", text], check=True, capture_output=True,
                         text=True).stdout
    return " ".join(out.split())


def speech_format(model_config) -> SpeechFormat:
    """The format a campaign's [model] section describes."""
    m = model_config
    return SpeechFormat(m.unit_token, m.speech_start, m.speech_end, m.prompt_template, m.deduplicate,
                        m.speaker_in_prompt)


def expand_runs(units: list[int], run: float) -> list[int]:
    """Deduplicated units back to frames, each held for the corpus's mean run length (an approximation: the
    model did not say how long)."""
    out: list[int] = []
    for i, u in enumerate(units):
        out += [u] * (round((i + 1) * run) - round(i * run))
    return out


def mean_run(sequences: list[list[int]]) -> float:
    """The mean length of a run of one repeated unit in golden sequences."""
    runs = [sum(1 for _ in group) for seq in sequences for _, group in groupby(seq)]
    return sum(runs) / max(1, len(runs))

def speaker_token(speaker: str) -> str:
    return "<spk:" + "".join(c if c.isalnum() or c in "-_+." else "_" for c in speaker.lower()) + ">"


def completion_text(units: list[int], fmt: SpeechFormat = DEMO_FORMAT) -> str:
    return fmt.completion(units)


def build_demo_tokenizer(codebook_size: int, speakers: list[str] = (),
                         fmt: SpeechFormat = DEMO_FORMAT) -> PreTrainedTokenizerFast:
    """Lower-cased characters, speaker tokens, and one token per codec unit.

    The pre-tokenizer must be a `Regex`: a plain string is matched literally and every unit then
    becomes <unk>, and DPO then trains on identical sequences (loss 0.6931, no gradient) without an error.
    """
    speech = fmt.speech_tokens(codebook_size, speakers)
    vocab_list = [PAD, UNK, *speech[:2], *TEXT_SYMBOLS, *speech[2:]]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"<[^>]+>|."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=UNK, pad_token=PAD, eos_token=fmt.speech_end,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [fmt.speech_start, fmt.speech_end]})
    check_units_survive(tokenizer, codebook_size, fmt)
    return tokenizer


def build_demo_model(tokenizer: PreTrainedTokenizerBase, layers: int, hidden_size: int, heads: int,
                     max_positions: int, seed: int) -> LlamaForCausalLM:
    """A small Llama: rotary positions learn the text-to-units alignment from a few hundred
    utterances far better than GPT-2's learned absolute positions did in our trials."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(demo_config(tokenizer, layers, hidden_size, heads, max_positions))


def demo_config(tokenizer: PreTrainedTokenizerBase, layers: int, hidden_size: int, heads: int,
                max_positions: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 8 // 3,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def check_units_survive(tokenizer: PreTrainedTokenizerBase, codebook_size: int,
                        fmt: SpeechFormat = DEMO_FORMAT) -> None:
    """Fail loudly if codec units do not tokenize to themselves (a pre-tokenizer pattern given as a plain string
    turns every unit into <unk>)."""
    probe = [0, codebook_size // 2, codebook_size - 1]
    text = "ab" + fmt.speech_start + "".join(fmt.unit(u) for u in probe) + fmt.speech_end
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    expected = [tokenizer.convert_tokens_to_ids(t) for t in [fmt.speech_start, *map(fmt.unit, probe), fmt.speech_end]]
    if ids[-len(expected):] != expected or tokenizer.unk_token_id in expected:
        raise ValueError(
            f"the tokenizer does not keep codec units as single tokens (got ids {ids}); its vocabulary needs "
            f"{fmt.speech_start}, {fmt.speech_end} and {fmt.unit(0)}..{fmt.unit(codebook_size - 1)} as tokens "
            "([model] unit_token, speech_start and speech_end say how your model writes them)")


def ensure_speech_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, codebook_size: int,
                             speakers: list[str] = (), fmt: SpeechFormat = DEMO_FORMAT) -> int:
    """Add the speech tokens a user's tokenizer lacks and resize the model; return how many were added (0 when
    the format matches the vocabulary: the model's own trained embeddings are used)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in fmt.speech_tokens(codebook_size, speakers) if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=False)
        model.resize_token_embeddings(len(tokenizer))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or fmt.speech_end
    check_units_survive(tokenizer, codebook_size, fmt)
    return len(missing)


@dataclass
class CodecLM:
    """A codec LM and its tokenizer, with the facts about them every stage needs (`metadata`)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    metadata: dict = field(default_factory=dict)  # codebook_size, speaker_in_prompt, added_tokens, history

    @property
    def codebook_size(self) -> int:
        return int(self.metadata["codebook_size"])

    @cached_property
    def format(self) -> SpeechFormat:
        """How this model writes speech (saved in its metadata)."""
        return SpeechFormat(**self.metadata["format"])

    def prompt(self, text: str, speaker: str | None) -> str:
        return self.format.prompt(text, speaker, self.tokenizer)

    def completion(self, units: list[int]) -> str:
        return self.format.completion(units)

    @property
    def eosp_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.format.speech_end)

    def unit_ids(self) -> list[int]:
        return self.tokenizer.convert_tokens_to_ids([self.format.unit(i) for i in range(self.codebook_size)])

    def non_speech_ids(self) -> list[int]:
        """Every id generation must never produce after <sosp>: all but the units and the stop tokens."""
        allowed = set(self.unit_ids()) | set(self.stop_ids())
        return [i for i in range(len(self.tokenizer)) if i not in allowed]

    def stop_ids(self) -> list[int]:
        ids = {self.eosp_id}
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)

    def ids_to_units(self, ids: list[int]) -> tuple[list[int], bool]:
        """Units from generated ids, up to the first stop token; also whether a stop token ended it."""
        stops = set(self.stop_ids())
        units = []
        for i, tok in zip(ids, self.tokenizer.convert_ids_to_tokens(ids)):
            if i in stops:
                return units, True
            code = self.format.code(tok)
            if code is not None:
                units.append(code)
        return units, False

    def save(self, path: Path, max_shard_size: str = "5GB") -> None:
        """Write the model (in shards of at most `max_shard_size`), tokenizer and metadata; a directory that has
        the metadata file is complete."""
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, max_shard_size=max_shard_size)
        self.tokenizer.save_pretrained(path)
        (path / METADATA_FILE).write_text(json.dumps({**self.metadata, "format": asdict(self.format)}, indent=2))


def is_saved_policy(path: Path) -> bool:
    return (Path(path) / METADATA_FILE).is_file()


def load_codec_lm(path: Path, for_training: bool = False, precision: Precision | None = None, **load) -> CodecLM:
    """Load a policy saved by `CodecLM.save` (the base model, or a round's merged policy).

    For inference it goes to the precision's device in its inference dtype (models/precision.py); for training it is
    loaded in the training dtype, with what `load` adds (`load_options`: quantization), and the trainer places it.
    """
    path = Path(path)
    if not is_saved_policy(path):
        raise FileNotFoundError(f"{path} is not a speechalign policy directory (no {METADATA_FILE}); "
                                "run `speechalign bootstrap` to make the base model")
    precision = precision or decide_precision()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if for_training:
        model = AutoModelForCausalLM.from_pretrained(path, **{"dtype": precision.training, **load})
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=precision.inference).to(precision.device)
        model.eval()
    lm = CodecLM(model=model, tokenizer=tokenizer, metadata=json.loads((path / METADATA_FILE).read_text()))
    check_units_survive(tokenizer, lm.codebook_size, lm.format)
    return lm


def load_tokenizer_only(path: Path | str) -> CodecLM:
    """A policy's tokenizer and metadata without its weights (`model` is None): for a generation backend that runs
    the model elsewhere (models/vllm_backend.py) and only writes prompts and reads units."""
    path = Path(path)
    if not is_saved_policy(path):
        raise FileNotFoundError(f"{path} is not a speechalign policy directory (no {METADATA_FILE}); "
                                "run `speechalign bootstrap` to make the base model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = CodecLM(model=None, tokenizer=tokenizer, metadata=json.loads((path / METADATA_FILE).read_text()))
    check_units_survive(tokenizer, lm.codebook_size, lm.format)
    return lm


def lineage_after(parent: str, parent_metadata: dict, adapter: str) -> dict | None:
    """What a policy made by merging `adapter` into the policy `parent` is: {"base": the model the chain starts
    from, "adapters": every adapter merged since, in order}, so a server can run it as its base model with the
    adapters (models/vllm_backend.py) instead of its merged weights. None when the parent is a merged policy that
    does not record its own (saved before lineages were)."""
    if "parent" not in parent_metadata:  # a base model: bootstrap's, or a user's
        return {"base": str(parent), "adapters": [str(adapter)]}
    before = parent_metadata.get("lineage")
    return {"base": before["base"], "adapters": [*before["adapters"], str(adapter)]} if before else None


_IN_MEMORY: dict[tuple[str, int], CodecLM] = {}


def inference_policy(path: Path | str, precision: Precision | None = None) -> CodecLM:
    """The policy at `path` for inference, loaded once per process: the stages that follow one another on one policy
    (held-out generation, its likelihood scores, the golden tokens' likelihood) share one copy, and loading another
    policy drops the one before, so a process holds one policy at a time. A policy written again in the same place
    (a retried train stage) is loaded again."""
    key = (str(Path(path).resolve()), (Path(path) / METADATA_FILE).stat().st_mtime_ns if is_saved_policy(path) else 0)
    if key not in _IN_MEMORY:
        release_policies()
        _IN_MEMORY[key] = load_codec_lm(path, precision=precision)
    return _IN_MEMORY[key]


def release_policies() -> None:
    """Drop the policy `inference_policy` holds, and the GPU memory it took (before training loads its own)."""
    _IN_MEMORY.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_options(model_config) -> dict:
    """from_pretrained's dtype and quantization for training, from a campaign's [model] dtype and quantization.
    A quantized model loads on this process's GPU (LOCAL_RANK under a multi-process launch)."""
    m = model_config
    precision = decide_precision(m.dtype)
    options: dict = {"dtype": precision.training}
    if m.quantization != "none":
        from transformers import BitsAndBytesConfig  # noqa: PLC0415

        options["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=m.quantization == "8bit", load_in_4bit=m.quantization == "4bit",
            bnb_4bit_compute_dtype=precision.inference, bnb_4bit_quant_type="nf4")
        options["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return options


def load_user_model(path: Path, codebook_size: int, speakers: list[str], fmt: SpeechFormat, **load) -> CodecLM:
    """A user's own HF causal-LM directory, with the speech vocabulary added where it lacks it. `load`: what
    from_pretrained takes on a large model (dtype, quantization_config)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a Hugging Face model directory (no config.json); point [model] base_model at a "
            "directory saved with save_pretrained, or leave it empty for the demo model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, **load)
    added = ensure_speech_vocabulary(model, tokenizer, codebook_size, speakers if fmt.speaker_in_prompt else [], fmt)
    return CodecLM(model, tokenizer, {"codebook_size": codebook_size, "speaker_in_prompt": fmt.speaker_in_prompt,
                                      "added_tokens": added, "source": str(path.resolve()), "format": asdict(fmt)})
