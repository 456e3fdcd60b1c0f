"""The codec language model: a Hugging Face causal LM that reads text and speaks codec units.

Sequence format (SpeechGPT style):  ``[<spk:NAME>]<text characters><sosp><u12><u7>...<u903><eosp>``
The prompt is everything up to and including ``<sosp>``; the completion is the units and ``<eosp>``.
A speaker token leads the prompt when the corpus names speakers and `speaker_in_prompt` is on: the
golden tokens of a recording depend on the voice, so a model told the voice can learn them.

Two ways in, one code path out:
- the demo builds a character-level WordLevel tokenizer and a small GPT-2 from scratch;
- a user's HF model directory is loaded as is, and any missing ``<sosp> <eosp> <u0>...`` tokens are
  added to its tokenizer (and its embeddings resized) by `ensure_unit_vocabulary`.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
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

SOSP, EOSP, PAD, UNK = "<sosp>", "<eosp>", "<pad>", "<unk>"
UNIT_PATTERN = re.compile(r"<u(\d+)>")
TEXT_SYMBOLS = list(string.ascii_lowercase + string.digits + " .,?!'-:;\"")
METADATA_FILE = "speechalign.json"


def unit_token(code: int) -> str:
    return f"<u{code}>"


def units_to_text(units: list[int]) -> str:
    return "".join(unit_token(int(u)) for u in units)


def speaker_token(speaker: str) -> str:
    return "<spk:" + "".join(c if c.isalnum() or c in "-_+." else "_" for c in speaker.lower()) + ">"


def prompt_text(text: str, speaker: str | None = None) -> str:
    return (speaker_token(speaker) if speaker else "") + text.strip() + SOSP


def completion_text(units: list[int]) -> str:
    return units_to_text(units) + EOSP


def build_demo_tokenizer(codebook_size: int, speakers: list[str] = ()) -> PreTrainedTokenizerFast:
    """Lower-cased characters, speaker tokens, and one token per codec unit.

    The pre-tokenizer must be a `Regex`: a plain string is matched literally and every unit then
    becomes <unk> (DPO trains on identical sequences without an error; see NOTES).
    """
    vocab_list = ([PAD, UNK, SOSP, EOSP] + TEXT_SYMBOLS + sorted({speaker_token(s) for s in speakers})
                  + [unit_token(i) for i in range(codebook_size)])
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"<[^>]+>|."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=UNK, pad_token=PAD, eos_token=EOSP,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [SOSP, EOSP]})
    check_units_survive(tokenizer, codebook_size)
    return tokenizer


def build_demo_model(tokenizer: PreTrainedTokenizerBase, layers: int, hidden_size: int, heads: int,
                     max_positions: int, seed: int) -> LlamaForCausalLM:
    """A small Llama: rotary positions learn the text-to-units alignment from a few hundred
    utterances far better than GPT-2's learned absolute positions did in our trials."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 8 // 3,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(EOSP), pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def check_units_survive(tokenizer: PreTrainedTokenizerBase, codebook_size: int) -> None:
    """Fail loudly if codec units do not tokenize to themselves (the silent <unk> trap in NOTES)."""
    probe = [0, codebook_size // 2, codebook_size - 1]
    ids = tokenizer("ab" + SOSP + units_to_text(probe) + EOSP, add_special_tokens=False)["input_ids"]
    expected = [tokenizer.convert_tokens_to_ids(t) for t in [SOSP, *map(unit_token, probe), EOSP]]
    if ids[-len(expected):] != expected or tokenizer.unk_token_id in expected:
        raise ValueError(
            f"the tokenizer does not keep codec units as single tokens (got ids {ids}); "
            "its vocabulary needs <sosp>, <eosp> and <u0>..<uN> as added tokens"
        )


def ensure_speech_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, codebook_size: int,
                             speakers: list[str] = ()) -> int:
    """Add any missing speech tokens to a user's tokenizer and resize the model; return how many were added."""
    vocab = tokenizer.get_vocab()
    wanted = [SOSP, EOSP, *sorted({speaker_token(s) for s in speakers}), *map(unit_token, range(codebook_size))]
    missing = [t for t in wanted if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=False)
        model.resize_token_embeddings(len(tokenizer))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or EOSP
    check_units_survive(tokenizer, codebook_size)
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

    def prompt(self, text: str, speaker: str | None) -> str:
        return prompt_text(text, speaker if self.metadata.get("speaker_in_prompt") else None)

    @property
    def sosp_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(SOSP)

    @property
    def eosp_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(EOSP)

    def unit_ids(self) -> list[int]:
        return self.tokenizer.convert_tokens_to_ids([unit_token(i) for i in range(self.codebook_size)])

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
        for tok in self.tokenizer.convert_ids_to_tokens(ids):
            if self.tokenizer.convert_tokens_to_ids(tok) in stops:
                return units, True
            match = UNIT_PATTERN.fullmatch(tok or "")
            if match:
                units.append(int(match.group(1)))
        return units, False

    def save(self, path: Path) -> None:
        """Write the model, tokenizer and metadata; a directory that has the metadata file is complete."""
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (path / METADATA_FILE).write_text(json.dumps(self.metadata, indent=2))


def is_saved_policy(path: Path) -> bool:
    return (Path(path) / METADATA_FILE).is_file()


def best_device() -> tuple[str, torch.dtype]:
    """A GPU in bf16 when there is one that supports it, else the CPU in fp32."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


def load_codec_lm(path: Path, for_training: bool = False) -> CodecLM:
    """Load a policy saved by `CodecLM.save` (the base model, or a round's merged policy).

    For inference it goes to the best device (`best_device`); for training it stays in fp32 on the
    CPU and the trainer places it (mixed precision keeps fp32 master weights).
    """
    path = Path(path)
    if not is_saved_policy(path):
        raise FileNotFoundError(f"{path} is not a speechalign policy directory (no {METADATA_FILE}); "
                                "run `speechalign bootstrap` to make the base model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    device, dtype = ("cpu", torch.float32) if for_training else best_device()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    metadata = json.loads((path / METADATA_FILE).read_text())
    check_units_survive(tokenizer, int(metadata["codebook_size"]))
    return CodecLM(model=model, tokenizer=tokenizer, metadata=metadata)


def load_user_model(path: Path, codebook_size: int, speakers: list[str], speaker_in_prompt: bool) -> CodecLM:
    """A user's own HF causal-LM directory, with the speech vocabulary added where it lacks it."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a Hugging Face model directory (no config.json); point [model] base_model at a "
            "directory saved with save_pretrained, or leave it empty for the demo model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    added = ensure_speech_vocabulary(model, tokenizer, codebook_size, speakers if speaker_in_prompt else [])
    return CodecLM(model, tokenizer, {"codebook_size": codebook_size, "speaker_in_prompt": speaker_in_prompt,
                                      "added_tokens": added, "source": str(path.resolve())})
