"""Codec plug-ins: what turns a recording into the units a codec LM speaks, and units back into audio.

A codec here is one object with:

    kind                  "speechtokenizer", "xcodec2", "neucodec", "mimi", "dac" or "encodec" ([codec] kind)
    sample_rate           the rate it encodes: the corpus is read at it (resampled on import when a recording is
                          at another rate, and recorded as a repair)
    output_sample_rate    the rate of the WAVs it decodes (NeuCodec: 24 kHz from 16 kHz input; the others: the same)
    hop, frame_rate       input samples per frame, frames per second
    codebooks             codebooks `encode` gives (what the store keeps as a prompt's golden tokens: all of them)
    codebook_size         codes per codebook
    flattening            how codes become the LM's units and back (`Flattening`: the first [codec] codebooks)
    encode(wavs)          codes per recording, int arrays of shape (codebooks, frames)
    synthesize_each(units, speakers)   a WAV per unit sequence (or the exception that sequence failed with)

The LM speaks units, never codes: golden tokens are `flattening.flatten(prompt.golden_tokens)` (`golden_units`), and
the store, scores and pairs work on units only. For SpeechTokenizer (the default and the demo's path) the flattening
is layer 1 alone (k = 1), so its units are layer 1's codes as they always were, and its decoding is the acoustic
stage plus the codec's decoder (models/speechtokenizer/synthesizer.py), unchanged. The transformers codecs
(models/codecs/transformers_codecs.py) decode their units directly: no acoustic stage.

`open_codec(cfg)` loads the configured one; `codec_flattening(codec_config)` reads only the codec's config (no
weights) for the places that need the units but not the audio.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

KINDS = ("speechtokenizer", "xcodec2", "neucodec", "mimi", "dac", "encodec")
SINGLE_CODEBOOK = ("xcodec2", "neucodec")  # one FSQ codebook of 65,536 codes: one code is one unit


@dataclass(frozen=True)
class Flattening:
    """The LM's units from a codec's codes: the first `codebooks` (k) codebooks, interleaved frame after frame, each
    codebook's codes shifted by its own offset, as Orpheus writes SNAC's:

        unit = c * codebook_size + code          (c = 0 .. k-1, the codebook)
        units = [f0c0, f0c1, ..., f0c(k-1), f1c0, f1c1, ...]   (frame 0's k units, then frame 1's, ...)

    With k = 1 the units are the first codebook's codes as they are (SpeechTokenizer's layer 1, X-codec2, NeuCodec).
    The LM's vocabulary holds k * codebook_size units.

    A sequence cut mid-frame (the LM stopped, or hit its length limit, inside a frame) is trimmed: `unflatten` drops
    the incomplete last frame, whose codes the decoder cannot use. A unit at a position that belongs to another
    codebook (a unit of codebook 1 where codebook 0's is due) is an error naming the position: decoding it would
    mean guessing. Generation keeps to the frame's order (models/sampling.py), so only a model used outside
    speechalign's generation gives such a sequence."""

    codebooks: int = 1
    codebook_size: int = 1024

    @property
    def units(self) -> int:
        """How many distinct units the LM speaks."""
        return self.codebooks * self.codebook_size

    def flatten(self, codes) -> list[int]:
        """Units of codes (codebooks, frames): the first k codebooks, interleaved with offsets."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] < self.codebooks:
            raise ValueError(f"codes of shape {codes.shape}: the flattening takes the first {self.codebooks} "
                             "codebooks of (codebooks, frames) codes")
        first = codes[: self.codebooks]
        if first.size and (first.min() < 0 or first.max() >= self.codebook_size):
            raise ValueError(f"a code outside 0..{self.codebook_size - 1}: these codes are not this codec's")
        offsets = (np.arange(self.codebooks) * self.codebook_size)[:, None]
        return (first + offsets).T.reshape(-1).tolist()

    def whole_frames(self, units: list[int]) -> int:
        return len(units) // self.codebooks

    def unflatten(self, units: list[int]) -> np.ndarray:
        """Codes (k, frames) of units; an incomplete last frame is dropped (see the class docstring)."""
        k, n = self.codebooks, self.codebook_size
        frames = len(units) // k
        flat = np.asarray(list(units[: frames * k]), dtype=np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.units):
            bad = int(flat[(flat < 0) | (flat >= self.units)][0])
            raise ValueError(f"unit {bad} is outside the LM's units (0..{self.units - 1}: {k} codebook(s) of {n}): "
                             "the policy's speech vocabulary does not match the codec; bootstrap with this codec")
        grid = flat.reshape(frames, k).T  # (k, frames)
        book = grid // n
        wrong = np.argwhere(book != np.arange(k)[:, None])
        if len(wrong):
            c, f = (int(x) for x in wrong[0])
            raise ValueError(f"unit {int(grid[c, f])} at position {f * k + c} belongs to codebook {int(book[c, f])}, "
                             f"where codebook {c}'s unit is due (frame {f}); units are {k} codebooks interleaved "
                             "frame after frame")
        return grid - (np.arange(k) * n)[:, None]


def golden_units(golden_tokens, flattening: Flattening) -> list[int]:
    """What the LM speaks for a prompt: its golden tokens (all codebooks, as the store keeps them) flattened."""
    return flattening.flatten(golden_tokens)


class Codec(Protocol):
    kind: str
    sample_rate: int
    output_sample_rate: int
    hop: int
    frame_rate: float
    codebooks: int
    codebook_size: int
    flattening: Flattening

    def encode(self, wavs: list[np.ndarray], batch_size: int = 16, on_batch=None) -> list[np.ndarray]: ...

    def synthesize(self, units: list[list[int]], speakers: list[str | None],
                   batch_size: int = 16) -> list[np.ndarray]: ...

    def synthesize_each(self, units: list[list[int]], speakers: list[str | None],
                        batch_size: int = 16) -> list[np.ndarray | Exception]: ...


def uses_acoustic_stage(codec_config) -> bool:
    """Whether decoding goes through bootstrap's acoustic stage: SpeechTokenizer with codec.acoustic = "model". The
    transformers codecs decode their units directly, whatever codec.acoustic says."""
    return codec_config.kind == "speechtokenizer" and codec_config.acoustic == "model"


def decoding_path(codec_config) -> str:
    """A name for how units become audio (the ceiling's golden-token WAVs live under it): the SpeechTokenizer's
    codec.acoustic as before, else the codec's kind and k."""
    if codec_config.kind == "speechtokenizer":
        return codec_config.acoustic
    return f"{codec_config.kind}-k{codec_config.codebooks}"


def open_codec(cfg, acoustic: bool = True) -> Codec:
    """The campaign's codec; `acoustic`: with SpeechTokenizer, load the work directory's acoustic stage for decoding
    (codec.acoustic = "model"); encoding never needs it."""
    c = cfg.codec
    stage = str(cfg.layout.acoustic) if acoustic and uses_acoustic_stage(c) else None
    return _open(c.kind, *map(str, c.files()), c.codebooks, stage)


@lru_cache(maxsize=2)
def _open(kind: str, *args) -> Codec:
    """Loaded once per process (the decode stage of every round, the ceiling, the listening page)."""
    *files, codebooks, stage = args
    if kind == "speechtokenizer":
        from speechalign.models.codecs.speechtokenizer import SpeechTokenizerCodec  # noqa: PLC0415

        return SpeechTokenizerCodec.load(Path(files[0]), Path(files[1]), Path(stage) if stage else None)
    from speechalign.models.codecs.transformers_codecs import load_transformers_codec  # noqa: PLC0415

    return load_transformers_codec(kind, Path(files[0]).parent, codebooks)


def codec_flattening(codec_config) -> Flattening:
    """The flattening of the configured codec from its config file alone (no weights loaded)."""
    return _flattening(codec_config.kind, str(codec_config.files()[0]), codec_config.codebooks)


@lru_cache(maxsize=8)
def _flattening(kind: str, config_file: str, codebooks: int) -> Flattening:
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"codec config {path} does not exist; set [codec] "
                                + ("config_path" if kind == "speechtokenizer" else "path"))
    if kind == "speechtokenizer":
        return Flattening(1, int(json.loads(path.read_text())["codebook_size"]))
    from speechalign.models.codecs.transformers_codecs import codebook_layout  # noqa: PLC0415

    available, size = codebook_layout(kind, path.parent)
    if codebooks > available:
        raise ValueError(f"codec.codebooks = {codebooks}, but the {kind} codec in {path.parent} has {available} "
                         "codebooks")
    return Flattening(codebooks, size)


def as_codec(codec) -> Codec:
    """A codec plug-in as it is; a bare SpeechTokenizer (the speechtokenizer package's model) wrapped as one."""
    if hasattr(codec, "flattening"):
        return codec
    from speechalign.models.codecs.speechtokenizer import SpeechTokenizerCodec  # noqa: PLC0415

    return SpeechTokenizerCodec(codec)
