"""The codecs transformers holds, loaded from a local directory (`from_pretrained(codec.path)`) as codec plug-ins.

    kind       model            codebooks x codes        rates (in -> out), frames     the LM's units
    xcodec2    Xcodec2Model     1 FSQ x 65,536           16 kHz -> 16 kHz, 50 Hz       one code, one unit (Llasa)
    neucodec   NeuCodecModel    1 FSQ x 65,536           16 kHz -> 24 kHz, 50 Hz       one code, one unit (NeuTTS)
    mimi       MimiModel        RVQ, e.g. 32 x 2,048     24 kHz, 12.5 Hz               first k codebooks interleaved
    dac        DacModel         RVQ, e.g. 12 x 1,024     16/24/44 kHz                  first k codebooks interleaved
    encodec    EncodecModel     RVQ, e.g. 32 x 1,024     24 kHz, 75 Hz                 first k codebooks interleaved

Encoding keeps every codebook the codec has (the store's golden tokens; EnCodec at its largest bandwidth); the LM
speaks the first `codec.codebooks` of them (models/codecs `Flattening`). An RVQ's first k codebooks are the same
whether it encodes k or all of them, so k can change without importing the corpus again (a new vocabulary, though:
bootstrap a new base model). Decoding reads the k codebooks the LM speaks.

Each recording is encoded on its own and each unit sequence decoded in a batch of sequences of its own length only:
with zero padding, these models' codes and audio change near a sequence's end (their attention and convolutions see
the padding), and a sample's golden tokens and audio must not depend on what it was batched with.

X-codec2 and NeuCodec read the waveform and, for their semantic encoder, 160-dimensional filter-bank features. Their
transformers feature extractors need torchaudio, which cannot be installed beside transformers on a CPU machine (see
models/audio.py); the features are made by `SeamlessM4TFeatureExtractor` (80 Kaldi mel bins, per-bin mean and
variance normalisation, stride-2 stacking, padding value 1), the w2v-BERT 2.0 preprocessor the original X-codec2 and
NeuCodec code computes them with, on the waveform padded as their extractors pad it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from speechalign.models.codecs import SINGLE_CODEBOOK, Flattening

HELP = ("set [codec] path to a directory saved with save_pretrained (config.json and model.safetensors) of that "
        "transformers codec class")


def _model_class(kind: str):
    import transformers  # noqa: PLC0415

    return {"xcodec2": transformers.Xcodec2Model, "neucodec": transformers.NeuCodecModel,
            "mimi": transformers.MimiModel, "dac": transformers.DacModel, "encodec": transformers.EncodecModel}[kind]


def _config(kind: str, path: Path):
    from transformers import AutoConfig  # noqa: PLC0415

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"codec.path {path} has no config.json; {HELP}")
    config = AutoConfig.from_pretrained(path)
    expected = {"xcodec2": "xcodec2", "neucodec": "neucodec", "mimi": "mimi", "dac": "dac", "encodec": "encodec"}[kind]
    if config.model_type != expected:
        raise ValueError(f"codec.kind = {kind!r}, but {path} holds a {config.model_type!r} model; set codec.kind to "
                         "the model's kind")
    return config


def codebook_layout(kind: str, path: Path) -> tuple[int, int]:
    """(codebooks, codes per codebook) of the codec in `path`, from its config alone."""
    config = _config(kind, Path(path))
    if kind in SINGLE_CODEBOOK:
        return 1, int(np.prod(config.quantization_levels))
    if kind == "mimi":
        return int(config.num_quantizers), int(config.codebook_size)
    if kind == "dac":
        return int(config.n_codebooks), int(config.codebook_size)
    return int(config.num_quantizers), int(config.codebook_size)  # encodec at its largest bandwidth


class TransformersCodec:
    """The common part: flattening, decoding unit sequences in same-length batches, trimming to whole frames."""

    kind = ""

    def __init__(self, model, codebooks: int):
        self.model = model.eval()
        self.config = model.config
        self.codebooks, self.codebook_size = codebook_layout_of(self.kind, self.config)
        if not 1 <= codebooks <= self.codebooks:
            raise ValueError(f"codec.codebooks = {codebooks}: the {self.kind} codec has {self.codebooks} codebook(s)")
        self.flattening = Flattening(codebooks, self.codebook_size)
        self.frame_rate = self.sample_rate / self.hop
        self.output_hop = round(self.output_sample_rate / self.frame_rate)

    output_sample_rate: int
    sample_rate: int
    hop: int

    def frames_for(self, samples: int) -> int:
        return math.ceil(samples / self.hop)

    @torch.inference_mode()
    def encode(self, wavs: list[np.ndarray], batch_size: int = 16, on_batch=None) -> list[np.ndarray]:
        """Codes (codebooks, frames) per waveform at `sample_rate`, each recording on its own (see the module's
        docstring); `on_batch(n)` is told after every `batch_size` recordings."""
        out = []
        for i, wav in enumerate(wavs, start=1):
            out.append(self.encode_one(np.asarray(wav, dtype=np.float32)).astype(np.int32))
            if on_batch and (i % batch_size == 0 or i == len(wavs)):
                on_batch(batch_size if i % batch_size == 0 else i % batch_size)
        return out

    def encode_one(self, wav: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @torch.inference_mode()
    def decode_codes(self, codes: list[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
        """Waveforms at `output_sample_rate` of codes (codebooks, frames), batched only with codes of the same shape;
        each at most frames x output hop samples long."""
        out: list[np.ndarray | None] = [None] * len(codes)
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(codes):
            groups.setdefault(np.asarray(c).shape, []).append(i)
        for shape, idx in sorted(groups.items()):
            if shape[-1] == 0:
                for i in idx:
                    out[i] = np.zeros(0, dtype=np.float32)  # the LM ended at once: an empty clip, scored as such
                continue
            for start in range(0, len(idx), batch_size):
                part = idx[start:start + batch_size]
                batch = torch.as_tensor(np.stack([np.asarray(codes[i]) for i in part]), dtype=torch.long)
                wav = self.decode_batch(batch)  # (B, samples)
                for row, i in enumerate(part):
                    out[i] = wav[row, : shape[-1] * self.output_hop].float().numpy().astype(np.float32)
        return out  # type: ignore[return-value]

    def decode_batch(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def synthesize(self, units: list[list[int]], speakers: list[str | None] | None = None,
                   batch_size: int = 16) -> list[np.ndarray]:
        """WAVs of unit sequences (the speaker is in the units: these codecs have no speaker input)."""
        return self.decode_codes([self.flattening.unflatten(u) for u in units], batch_size)

    def synthesize_each(self, units: list[list[int]], speakers: list[str | None],
                        batch_size: int = 16) -> list[np.ndarray | Exception]:
        """Like `synthesize`, but a sequence that cannot be decoded costs only itself."""
        try:
            return list(self.synthesize(units, speakers, batch_size))
        except Exception:  # noqa: BLE001 - find which sequence it was
            out: list[np.ndarray | Exception] = []
            for u in units:
                try:
                    out.append(self.synthesize([u])[0])
                except Exception as exc:  # noqa: BLE001
                    out.append(exc)
            return out


def codebook_layout_of(kind: str, config) -> tuple[int, int]:
    if kind in SINGLE_CODEBOOK:
        return 1, int(np.prod(config.quantization_levels))
    if kind == "dac":
        return int(config.n_codebooks), int(config.codebook_size)
    return int(config.num_quantizers), int(config.codebook_size)


# ---- X-codec2 and NeuCodec: a waveform and filter-bank features in -----------------------------------------------

_FBANK = None


def _fbank():
    global _FBANK
    if _FBANK is None:
        from transformers import SeamlessM4TFeatureExtractor  # noqa: PLC0415

        _FBANK = SeamlessM4TFeatureExtractor(feature_size=80, num_mel_bins=80, sampling_rate=16000,
                                             padding_value=1.0, stride=2)
    return _FBANK


class Xcodec2Codec(TransformersCodec):
    """Llasa's codec: 16 kHz, 50 Hz, one FSQ codebook of 65,536 codes."""

    kind = "xcodec2"

    def __init__(self, model, codebooks: int = 1):
        self.sample_rate = self.output_sample_rate = int(model.config.sampling_rate)
        self.hop = int(model.config.hop_length)
        super().__init__(model, codebooks)

    def frames_for(self, samples: int) -> int:
        return math.ceil((samples + 1) / self.hop)  # the extractor appends one sample before padding to the hop

    def semantic_audio(self, padded: np.ndarray) -> np.ndarray:
        """What the filter bank reads: X-codec2 pads half a hop of zeros on each side."""
        return np.pad(padded, (self.hop // 2, self.hop // 2))

    def inputs(self, wav: np.ndarray) -> dict:
        """The model's inputs for one waveform, as its feature extractor makes them (one more zero sample, then
        zero padding to a whole hop)."""
        wav = np.concatenate([wav, np.zeros(1, np.float32)])
        padded = np.pad(wav, (0, -len(wav) % self.hop))
        feats = _fbank()([self.semantic_audio(padded)], sampling_rate=16000, padding=True,
                         return_attention_mask=True, return_tensors="pt")
        mask = torch.zeros(1, len(padded), dtype=torch.long)
        mask[0, : len(wav)] = 1
        return {"input_values": torch.from_numpy(padded)[None, None], "padding_mask": mask,
                "input_features": feats["input_features"], "input_features_mask": feats["attention_mask"]}

    def encode_one(self, wav: np.ndarray) -> np.ndarray:
        codes = self.model.encode(**self.inputs(wav)).audio_codes.long()  # (1, 1, frames)
        return codes[0, :, : self.frames_for(len(wav))].numpy()

    def decode_batch(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(audio_codes=codes).audio_values.reshape(len(codes), -1)


class NeuCodecCodec(Xcodec2Codec):
    """NeuTTS's codec: 16 kHz in, 24 kHz out, 50 Hz, one FSQ codebook of 65,536 codes."""

    kind = "neucodec"

    def __init__(self, model, codebooks: int = 1):
        self.sample_rate = int(model.config.input_sampling_rate)
        self.output_sample_rate = int(model.config.output_sampling_rate)
        self.hop = int(model.config.encoder_hop_length)  # config.hop_length is the 24 kHz decoder's
        TransformersCodec.__init__(self, model, codebooks)

    def frames_for(self, samples: int) -> int:
        return math.ceil((samples + 1) / self.hop)

    def semantic_audio(self, padded: np.ndarray) -> np.ndarray:
        return padded  # NeuCodec's extractor adds no padding around the filter bank's input

    def encode_one(self, wav: np.ndarray) -> np.ndarray:
        # its audio_codes_mask over-counts; the valid frames are the semantic features' (one per hop of input)
        codes = self.model.encode(**self.inputs(wav)).audio_codes.long()
        return codes[0, :, : min(codes.shape[-1], self.frames_for(len(wav)))].numpy()


# ---- the RVQ codecs ----------------------------------------------------------------------------------------------


class MimiCodec(TransformersCodec):
    """Kyutai's Mimi (Moshi, CSM): 24 kHz, 12.5 Hz, split RVQ (a semantic codebook first)."""

    kind = "mimi"

    def __init__(self, model, codebooks: int):
        self.sample_rate = self.output_sample_rate = int(model.config.sampling_rate)
        self.hop = int(model.config.frame_size)
        super().__init__(model, codebooks)

    def encode_one(self, wav: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(wav)[None, None]
        codes = self.model.encode(x, num_quantizers=self.codebooks).audio_codes  # (1, codebooks, frames)
        frames = int(self.model.get_encoded_length(torch.tensor([len(wav)]))[0])
        return codes[0, :, :frames].numpy()

    def decode_batch(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes).audio_values[:, 0]


class DacCodec(TransformersCodec):
    """Descript's DAC: RVQ at 16, 24 or 44.1 kHz."""

    kind = "dac"

    def __init__(self, model, codebooks: int):
        self.sample_rate = self.output_sample_rate = int(model.config.sampling_rate)
        self.hop = int(model.config.hop_length)
        super().__init__(model, codebooks)

    def encode_one(self, wav: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.pad(wav, (0, -len(wav) % self.hop)))[None, None]  # as DAC's extractor pads
        codes = self.model.encode(x, n_quantizers=self.codebooks).audio_codes
        return codes[0, :, : self.frames_for(len(wav))].numpy()

    def decode_batch(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(audio_codes=codes).audio_values.reshape(len(codes), -1)


class EncodecCodec(TransformersCodec):
    """Meta's EnCodec, the 24 kHz model (no chunking, no normalisation), at its largest bandwidth."""

    kind = "encodec"

    def __init__(self, model, codebooks: int):
        config = model.config
        if config.chunk_length_s is not None or config.normalize:
            raise ValueError("codec.kind = 'encodec' takes the 24 kHz EnCodec; this one chunks or normalises its input "
                             "(the 48 kHz model), which speechalign does not support")
        self.sample_rate = self.output_sample_rate = int(config.sampling_rate)
        self.hop = int(config.hop_length)
        self.bandwidth = float(config.target_bandwidths[-1])
        super().__init__(model, codebooks)

    def encode_one(self, wav: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(wav)[None, None]
        codes = self.model.encode(x, bandwidth=self.bandwidth).audio_codes[0]  # (1, codebooks, frames)
        return codes[0, :, : self.frames_for(len(wav))].numpy()

    def decode_batch(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes[None], [None]).audio_values[:, 0]


CODECS = {c.kind: c for c in (Xcodec2Codec, NeuCodecCodec, MimiCodec, DacCodec, EncodecCodec)}


def load_transformers_codec(kind: str, path: Path, codebooks: int) -> TransformersCodec:
    """The codec in `path` (save_pretrained), in eval mode on the CPU."""
    _config(kind, Path(path))
    model = _model_class(kind).from_pretrained(path)
    return CODECS[kind](model, codebooks)
