"""SpeechTokenizer as a codec plug-in: the demo's path, wrapped and not rewritten.

Encoding is `models/speechtokenizer/codec.py`'s `encode` (every RVQ layer), decoding the `Synthesizer` (layer-1
units -> the acoustic stage's latent, or layer 1's own, -> the codec's decoder). Its flattening is layer 1 alone, so
the units are layer 1's codes: the same units and the same WAVs as before this interface existed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speechalign.models.codecs import Flattening
from speechalign.models.speechtokenizer import codec as st
from speechalign.models.speechtokenizer.synthesizer import Synthesizer


class SpeechTokenizerCodec:
    kind = "speechtokenizer"

    def __init__(self, model, acoustic=None):
        self.model = model  # the speechtokenizer package's SpeechTokenizer
        self.synthesizer = Synthesizer(model, acoustic)
        self.sample_rate = self.output_sample_rate = int(model.sample_rate)
        self.hop = int(model.downsample_rate)
        self.frame_rate = self.sample_rate / self.hop
        self.codebooks, self.codebook_size = int(model.n_q), int(model.quantizer.bins)
        self.flattening = Flattening(1, self.codebook_size)

    @classmethod
    def load(cls, config_path: Path, checkpoint_path: Path, acoustic_dir: Path | None = None) -> SpeechTokenizerCodec:
        from speechalign.models.speechtokenizer.acoustic import load_acoustic  # noqa: PLC0415

        return cls(st.load_codec(config_path, checkpoint_path), load_acoustic(acoustic_dir) if acoustic_dir else None)

    def encode(self, wavs: list[np.ndarray], batch_size: int = 16, on_batch=None) -> list[np.ndarray]:
        return st.encode(self.model, wavs, batch_size, on_batch)

    def synthesize(self, units: list[list[int]], speakers: list[str | None], batch_size: int = 16) -> list[np.ndarray]:
        return self.synthesizer.synthesize(units, speakers, batch_size)

    def synthesize_each(self, units: list[list[int]], speakers: list[str | None],
                        batch_size: int = 16) -> list[np.ndarray | Exception]:
        return self.synthesizer.synthesize_each(units, speakers, batch_size)

    def decode_codes(self, codes: list[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
        return self.synthesizer.decode_codes(codes, batch_size)
