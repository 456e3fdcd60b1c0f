"""Metrics whose models a user provides by path (their weights ship in no package we can install):

- SpeechBERTScore (Saeki et al., 2024): BERTScore over self-supervised speech features between the
  sample and the golden recording, from a local HuBERT / WavLM checkpoint ([score] speechbertscore_model).
- NISQA v2.0 (Mittag et al., 2021): non-intrusive MOS and four quality dimensions of the sample, with
  torchmetrics' port of the network and the original weights file ([score] nisqa_weights).

Neither ever reaches the network: a missing path raises MetricUnavailable saying what to put where.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import soundfile as sf

from speechalign.models.audio import resample
from speechalign.models.metrics import MetricUnavailable, ScoreItem
from speechalign.models.metrics.asr import read_audio, sample_audio_path

# ------------------------------------------------------------------------------------- SpeechBERTScore

_SBS_HELP = ("set [score] speechbertscore_model to a local HuBERT or WavLM directory (a transformers checkpoint: "
             "config.json, model weights and, if it has one, preprocessor_config.json), e.g. a copy of "
             "facebook/hubert-base-ls960 saved with save_pretrained (model and feature extractor) on a machine with "
             "internet and copied here; [score] speechbertscore_layer picks the hidden layer (-1: the last)")


class SpeechBertScore:
    """SpeechBERTScore precision: the sample's and the golden recording's frame features (hidden layer
    `speechbertscore_layer` of the SSL model) are compared by cosine similarity, and each sample frame
    takes its best match among the reference frames; the score is the mean over sample frames (the
    paper's main figure). 1.0 for identical audio; higher is better. Golden features are cached per path."""

    name = "speechbertscore"
    needs_audio = True
    outputs = {"speechbertscore": True}
    CACHE_BYTES = 256 * 2**20  # golden features kept in memory (LRU)

    def __init__(self, options=None, policy: str | None = None) -> None:
        path = getattr(options, "speechbertscore_model", "") or ""
        if not path:
            raise MetricUnavailable(f"speechbertscore needs a speech SSL model: {_SBS_HELP}")
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise MetricUnavailable(f"[score] speechbertscore_model = {path!r} is not a transformers model directory "
                                    f"(no config.json there): {_SBS_HELP}")
        import torch  # noqa: PLC0415
        from transformers import AutoFeatureExtractor, AutoModel  # noqa: PLC0415

        try:
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True)
            self.extractor = (AutoFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
                              if (folder / "preprocessor_config.json").is_file() else None)
        except (OSError, ValueError) as e:
            raise MetricUnavailable(
                f"[score] speechbertscore_model = {path!r} could not be loaded ({e}): {_SBS_HELP}") from e
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        config = self.model.config
        n_states = int(getattr(config, "num_hidden_layers", 0)) + 1  # embeddings output + every layer
        self.layer = int(getattr(options, "speechbertscore_layer", -1))
        if not -n_states <= self.layer < n_states:
            raise MetricUnavailable(f"[score] speechbertscore_layer = {self.layer} is out of range for {path!r}, "
                                    f"which has {n_states} hidden states (0 .. {n_states - 1}, or -1 for the last)")
        self.rate = int(getattr(self.extractor, "sampling_rate", 16000) or 16000)
        # group-normalised conv front ends (HuBERT/wav2vec2 base) see padding: score those one clip at a time
        self.batched = getattr(config, "feat_extract_norm", "group") == "layer"
        kernels, strides = getattr(config, "conv_kernel", [400]), getattr(config, "conv_stride", [320])
        self.min_samples = 1
        for k, s in zip(reversed(list(kernels)), reversed(list(strides))):
            self.min_samples = (self.min_samples - 1) * s + k  # receptive field of one output frame
        self.batch_size = max(1, min(16, int(getattr(options, "batch_size", 16) or 16)))
        self._golden: OrderedDict[str, object] = OrderedDict()
        self._golden_bytes = 0

    # -- features

    def _prepare(self, wavs: list[np.ndarray]):
        """Model inputs for a list of waveforms at self.rate: (input_values, attention_mask or None)."""
        import torch  # noqa: PLC0415

        wavs = [np.pad(w, (0, max(0, self.min_samples - len(w)))).astype(np.float32) for w in wavs]
        if self.extractor is not None:
            enc = self.extractor(wavs, sampling_rate=self.rate, return_tensors="pt", padding=True,
                                 return_attention_mask=True)
            values, mask = enc["input_values"], enc.get("attention_mask")
        else:  # no feature extractor saved: zero mean, unit variance per clip, as wav2vec2-style extractors do
            normed = [(w - w.mean()) / np.sqrt(w.var() + 1e-7) for w in wavs]
            longest = max(len(w) for w in normed)
            values = torch.zeros(len(normed), longest)
            mask = torch.zeros(len(normed), longest, dtype=torch.long)
            for i, w in enumerate(normed):
                values[i, :len(w)] = torch.from_numpy(w)
                mask[i, :len(w)] = 1
        if mask is None:
            mask = torch.ones(values.shape[:2], dtype=torch.long)
        return values, mask

    def features(self, wavs: list[np.ndarray]) -> list:
        """Unit-length frame features (frames, dim) of each waveform (mono float at self.rate)."""
        import torch  # noqa: PLC0415

        groups = ([wavs[i:i + self.batch_size] for i in range(0, len(wavs), self.batch_size)] if self.batched
                  else [[w] for w in wavs])
        out = []
        for group in groups:
            values, mask = self._prepare(group)
            with torch.no_grad():
                hidden = self.model(values.to(self.device, self.model.dtype),
                                    attention_mask=mask.to(self.device) if len(group) > 1 else None,
                                    output_hidden_states=True).hidden_states[self.layer]
                lengths = getattr(self.model, "_get_feat_extract_output_lengths", None)
                frames = lengths(mask.sum(-1)).tolist() if lengths else [hidden.shape[1]] * len(group)
                for h, n in zip(hidden, frames):
                    out.append(torch.nn.functional.normalize(h[:max(1, int(n))].float(), dim=-1).cpu())
        return out

    def _golden_features(self, paths: list[str]) -> dict[str, object]:
        missing = [p for p in dict.fromkeys(paths) if p not in self._golden]
        if missing:
            for p, f in zip(missing, self.features([read_audio(p, self.rate) for p in missing])):
                self._golden[p] = f
                self._golden_bytes += f.numel() * f.element_size()
        found = {}
        for p in paths:
            self._golden.move_to_end(p)
            found[p] = self._golden[p]
        while self._golden_bytes > self.CACHE_BYTES and len(self._golden) > len(found):
            _, f = self._golden.popitem(last=False)
            self._golden_bytes -= f.numel() * f.element_size()
        return found

    # -- metric

    def score(self, items: list[ScoreItem]) -> list[dict[str, float]]:
        for i in items:
            sample_audio_path(i)
            if not i.golden_audio_path:
                raise ValueError(f"sample for {i.text!r} has no golden recording (golden_audio_path is None); "
                                 "speechbertscore compares against the prompt's real recording")
        golden = self._golden_features([i.golden_audio_path for i in items])
        samples = self.features([read_audio(i.audio_path, self.rate) for i in items])
        return [{"speechbertscore": precision(s, golden[i.golden_audio_path])} for s, i in zip(samples, items)]


def precision(sample, reference) -> float:
    """BERTScore precision between unit-length frame features: mean over sample frames of the best
    cosine similarity to any reference frame."""
    return float((sample @ reference.T).max(dim=1).values.mean().clamp(-1.0, 1.0))


# ---------------------------------------------------------------------------------------------- NISQA

_NISQA_HELP = ("set [score] nisqa_weights to the NISQA v2.0 weights file nisqa.tar from "
               "https://github.com/gabrielmittag/NISQA (weights/nisqa.tar), downloaded on a machine with internet and "
               "copied onto this machine")
# every args key torchmetrics' _NISQADIM, _get_librosa_melspec and _segment_specs read
NISQA_ARGS = ("ms_n_fft", "ms_hop_length", "ms_win_length", "ms_n_mels", "ms_fmax", "ms_seg_length",
              "ms_seg_hop_length", "ms_max_segments", "cnn_pool_1", "cnn_pool_2", "cnn_pool_3", "cnn_dropout",
              "cnn_kernel_size", "cnn_c_out_1", "cnn_c_out_2", "cnn_c_out_3", "td_sa_d_model", "td_sa_nhead",
              "td_sa_dropout", "td_sa_h", "td_sa_num_layers", "pool_att_h", "pool_att_dropout")
# the architecture torchmetrics implements (NISQA's "NISQA_DIM" with its default blocks)
_NISQA_ARCH = {"model": "NISQA_DIM", "cnn_model": "adapt", "td": "self_att", "td_2": "skip", "pool": "att"}


def _nisqa_module():
    """torchmetrics' NISQA module, with librosa bound even where `requests` is missing (the module
    then leaves librosa None; we never download, so we do not need requests)."""
    import librosa  # noqa: PLC0415
    from torchmetrics.functional.audio import nisqa as tm  # noqa: PLC0415

    if getattr(tm, "librosa", None) is None:
        tm.librosa = librosa
    return tm


class Nisqa:
    """NISQA v2.0 predictions for the sample alone (no reference): overall MOS, noisiness,
    discontinuity, coloration and loudness, each on a 1-5 scale where higher is better. The clip is
    scored at its own sample rate (NISQA's ms_sr = None) unless the weights' args fix one."""

    name = "nisqa"
    needs_audio = True
    outputs = {"nisqa_mos": True, "nisqa_noi": True, "nisqa_dis": True, "nisqa_col": True, "nisqa_loud": True}
    _ORDER = ("nisqa_mos", "nisqa_noi", "nisqa_dis", "nisqa_col", "nisqa_loud")  # the network's output order

    def __init__(self, options=None, policy: str | None = None) -> None:
        path = getattr(options, "nisqa_weights", "") or ""
        if not path:
            raise MetricUnavailable(f"nisqa needs its weights: {_NISQA_HELP}")
        file = Path(path).expanduser()
        if not file.is_file():
            raise MetricUnavailable(f"[score] nisqa_weights = {path!r} is not a file on this machine: {_NISQA_HELP}")
        import torch  # noqa: PLC0415

        self.tm = _nisqa_module()
        try:
            checkpoint = torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a wrong file
            raise MetricUnavailable(f"[score] nisqa_weights = {path!r} could not be read as a torch checkpoint "
                                    f"({e.__class__.__name__}: {e}): {_NISQA_HELP}") from e
        if not isinstance(checkpoint, dict) or not {"args", "model_state_dict"} <= checkpoint.keys():
            raise MetricUnavailable(f"[score] nisqa_weights = {path!r} is not a NISQA checkpoint (a dict with 'args' "
                                    f"and 'model_state_dict'): {_NISQA_HELP}")
        args = dict(checkpoint["args"])
        missing = [k for k in NISQA_ARGS if k not in args]
        other = {k: args[k] for k, v in _NISQA_ARCH.items() if k in args and args[k] != v}
        if missing or other:
            raise MetricUnavailable(
                f"[score] nisqa_weights = {path!r} is not the NISQA v2.0 multidimensional model (nisqa.tar)"
                + (f"; its args lack {', '.join(missing)}" if missing else "")
                + (f"; its architecture differs: {other}" if other else "") + f": {_NISQA_HELP}")
        self.args = args
        self.model = self.tm._NISQADIM(args)
        try:
            self.model.load_state_dict(checkpoint["model_state_dict"], strict=True)
        except RuntimeError as e:
            raise MetricUnavailable(f"[score] nisqa_weights = {path!r} does not fit the NISQA v2.0 network ({e}): "
                                    f"{_NISQA_HELP}") from e
        self.model.eval()
        self.batch_size = max(1, min(32, int(getattr(options, "batch_size", 32) or 32)))

    def _read(self, path: str) -> tuple[np.ndarray, int]:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        target = self.args.get("ms_sr")
        if target:
            audio, rate = resample(audio, rate, int(target)), int(target)
        return audio, rate

    def _segments(self, audio: np.ndarray, rate: int):
        import torch  # noqa: PLC0415

        seconds = len(audio) / rate
        with warnings.catch_warnings():  # librosa warns before _segment_specs says the clip is too short
            warnings.filterwarnings("ignore", message="n_fft=.* is too large")
            mel = self.tm._get_librosa_melspec(audio[None].astype(np.float32), rate, self.args)
        try:
            x, n_wins = self.tm._segment_specs(torch.from_numpy(mel), self.args)
        except RuntimeError as e:
            raise ValueError(f"NISQA cannot score a clip of {seconds:.2f} s: {e}") from e
        n = int(n_wins)
        return x[0, :n], n

    def score(self, items: list[ScoreItem]) -> list[dict[str, float]]:
        import torch  # noqa: PLC0415
        from torch.nn.utils.rnn import pad_sequence  # noqa: PLC0415

        paths = [sample_audio_path(i) for i in items]
        out: list[dict[str, float]] = []
        for start in range(0, len(paths), self.batch_size):
            segs, wins = zip(*(self._segments(*self._read(p)) for p in paths[start:start + self.batch_size]))
            with torch.no_grad():
                pred = self.model(pad_sequence(list(segs), batch_first=True), torch.tensor(wins, dtype=torch.long))
            out.extend(dict(zip(self._ORDER, (float(v) for v in row), strict=True)) for row in pred.reshape(-1, 5))
        return out
