"""DNSMOS P.835 (SIG, BAK, OVRL) of decoded samples, batched, with the ONNX model that ships in speechmos.

The values are speechmos.dnsmos.run's (within float rounding): a clip shorter than 9.01 s is repeat-padded
by appending it to itself until it is long enough, scored in 9.01 s windows that start every second
(speechmos keeps a window only when its float arithmetic gives it the full 144,160 samples, which leaves
out windows 7-23 among others), each window's three raw outputs go through the P.835 polynomials, and
the clip's value is the mean over its windows. speechmos's P.808 model is not run.

What is shared, and why it is exact. The network turns its window into 900 STFT frames (320 samples,
hop 160), takes their log power, runs four 3x3 'same' convolutions at full resolution (about 94% of
its compute), pools 2x2, and ends in three small conv/pool stages, a global max and dense layers. Windows
start 100 frames apart, so window w's frames are frames 100w..100w+899 of the padded clip. A full-
resolution output frame depends on 4 input frames either side, so every frame at least 4 frames from its
window's ends has the same value in every window that holds it: we compute those once per clip (the
"trunk": the model's own nodes up to the first pooling, cut out of the ONNX graph with a dynamic number
of frames), and compute each window's 4 edge frames on their own with the window's zero padding (8-frame
inputs). Each window's head (the rest of the graph, about 5%) then runs on its pooled frames. So the trunk
runs over 900 + 100 frames per further window of a clip, where speechmos runs the whole network on 900
frames per window. When a repeat-padded clip is a whole number of 320-sample codec frames long (every
decoded sample is), it repeats every len/160 frames: the trunk needs one period only, and windows share
edges.

Everything runs through onnxruntime on the model's own nodes and weights; the sub-graphs are cut from the
model file with onnx's Extractor.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import numpy as np

from speechalign.models.metrics import ScoreItem

SAMPLE_RATE = 16000
INPUT_LENGTH = 9.01  # seconds, as speechmos writes it (its window arithmetic is reproduced with this float)
WINDOW = int(INPUT_LENGTH * SAMPLE_RATE)  # 144,160 samples
FRAME_HOP = 160  # the network's STFT hop; its frames are 320 samples
FRAMES = 900  # STFT frames per window
EDGE = 4  # frames at each end of a window whose full-resolution features differ from the clip's
HALO = 2 * EDGE  # frames of context each side of a trunk chunk (even: keeps the 2x2 pooling aligned)
CHUNK = 1000  # at most this many trunk frames per chunk (plus the halo); even
GROUP_FRAMES = 16 * CHUNK  # clips whose trunk frames add up to about this many are scored together
MIN_SAMPLES = SAMPLE_RATE // 10  # 0.1 s

TRUNK_IN = "mos_estimator_logpow/concat:0"  # (n, frames, 320): the STFT frames
TRUNK_OUT = "mos_estimator_logpow/conv2d_3/Relu:0_pooling0"  # (n, 32, frames / 2, 80)
HEAD_OUT = "Identity:0"  # (n, 3): raw SIG, BAK, OVRL
# speechmos's P.835 polynomials (non-personalised model)
POLY = {"sig": np.poly1d([-0.08397278, 1.22083953, 0.0052439]),
        "bak": np.poly1d([-0.13166888, 1.60915514, -0.39604546]),
        "ovrl": np.poly1d([-0.06766283, 1.11546468, 0.04602535])}


def model_path() -> str:
    import speechmos  # noqa: PLC0415 - only to find the model file it ships

    return os.path.join(os.path.dirname(os.path.abspath(speechmos.__file__)), "dnsmos_models", "sig_bak_ovr.onnx")


def repeat_pad(audio: np.ndarray) -> np.ndarray:
    """speechmos's padding: append the clip to itself until it holds a window."""
    while len(audio) < WINDOW:
        audio = np.append(audio, audio)
    return audio


def window_starts(padded_length: int) -> list[int]:
    """Start samples of the windows speechmos scores in a padded clip, with its arithmetic: a window
    whose float end gives it fewer than WINDOW samples is skipped (idx 7-23 and others)."""
    num_hops = int(np.floor(padded_length / SAMPLE_RATE) - INPUT_LENGTH) + 1
    starts = []
    for idx in range(num_hops):
        start, end = int(idx * SAMPLE_RATE), int((idx + INPUT_LENGTH) * SAMPLE_RATE)
        if min(end, padded_length) - start >= WINDOW:
            starts.append(start)
    return starts


class Dnsmos:
    name = "dnsmos"
    needs_audio = True
    outputs = {"dnsmos_sig": True, "dnsmos_bak": True, "dnsmos_ovrl": True}

    def __init__(self, options=None, policy: str | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort  # noqa: PLC0415 - loads slowly; only where DNSMOS runs
        import torch  # noqa: PLC0415

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.inter_op_num_threads = 1
        model = _read_model(model_path())
        self.trunk = ort.InferenceSession(_cut(model, TRUNK_IN, [-1, -1, 2 * FRAME_HOP], TRUNK_OUT), so,
                                          providers=["CPUExecutionProvider"])
        self.head = ort.InferenceSession(_cut(model, TRUNK_OUT, [-1, 32, FRAMES // 2, 80], HEAD_OUT), so,
                                         providers=["CPUExecutionProvider"])
        self.trunk_batch = 2  # chunks of CHUNK + 2 * HALO frames per trunk call
        self.head_batch = 16  # windows per head call

    def score(self, items: list[ScoreItem]) -> list[dict[str, float]]:
        from speechalign.models.metrics.asr import read_audio, sample_audio_path  # noqa: PLC0415

        paths = [sample_audio_path(i) for i in items]
        scores = self.clips([read_audio(p, SAMPLE_RATE) for p in paths], names=paths)
        return [{f"dnsmos_{k}": v for k, v in s.items()} for s in scores]

    def clips(self, wavs: list[np.ndarray], names: list[str] | None = None) -> list[dict[str, float]]:
        """{"sig", "bak", "ovrl"} of each 16 kHz clip (float samples, clipped to [-1, 1] as speechmos needs)."""
        plans = []
        for n, wav in enumerate(wavs):
            wav = np.asarray(wav, dtype=np.float32).reshape(-1)
            what = names[n] if names else f"clip {n}"
            if len(wav) < MIN_SAMPLES:
                raise ValueError(f"{what} is {len(wav) / SAMPLE_RATE:.3f} s long ({len(wav)} samples); "
                                 "DNSMOS needs at least 0.1 s")
            if not np.isfinite(wav).all():
                raise ValueError(f"{what} has samples that are not finite numbers")
            plans.append(_ClipPlan(np.clip(wav, -1, 1)))
        groups, size = [[]], 0
        for plan in plans:  # bound the trunk's output held at once (10 KB a frame)
            if groups[-1] and size + len(plan.trunk_frames) > GROUP_FRAMES:
                groups.append([])
                size = 0
            groups[-1].append(plan)
            size += len(plan.trunk_frames)
        raw = np.concatenate([self._raw_windows(group) for group in groups])
        out, at = [], 0
        for plan in plans:
            r = raw[at:at + len(plan.starts)]
            at += len(plan.starts)
            out.append({k: float(np.mean([POLY[k](v) for v in r[:, j]]))
                        for j, k in enumerate(("sig", "bak", "ovrl"))})
        return out

    def _raw_windows(self, plans: list[_ClipPlan]) -> np.ndarray:
        """The network's raw (SIG, BAK, OVRL) for every window of every clip, in order."""
        # 1. the trunk over each clip's distinct frames, all clips laid end to end, in chunks with a halo
        #    (a clip's first and last EDGE frames come out wrong there: they are only ever window edges)
        frames = np.concatenate([p.trunk_frames for p in plans])
        total = len(frames)
        n_chunks = math.ceil(total / CHUNK)
        chunk = 2 * math.ceil(total / n_chunks / 2)  # at most CHUNK, even, and little padding
        padded = np.zeros((n_chunks * chunk + 2 * HALO, frames.shape[1]), np.float32)
        padded[HALO:HALO + total] = frames
        pooled = []
        for first in range(0, n_chunks, self.trunk_batch):
            batch = np.stack([padded[c * chunk:(c + 1) * chunk + 2 * HALO]
                              for c in range(first, min(first + self.trunk_batch, n_chunks))])
            out = self.trunk.run([TRUNK_OUT], {TRUNK_IN: batch})[0]  # (chunks, 32, chunk / 2 + HALO, 80)
            pooled.append(out[:, :, HALO // 2:(HALO + chunk) // 2])
        pooled = np.concatenate(pooled)
        pooled = pooled.transpose(1, 0, 2, 3).reshape(pooled.shape[1], -1, pooled.shape[3])  # (32, total / 2, 80)

        # 2. each window's edge frames with the window's own zero padding (2 * EDGE frames at each end);
        #    windows of a repeat-padded clip share many edges: each distinct one runs once
        edges_in = np.concatenate([p.edge_frames() for p in plans])  # (2 * windows, 2 * EDGE, 320)
        distinct, which = np.unique(edges_in.reshape(len(edges_in), -1), axis=0, return_inverse=True)
        distinct = distinct.reshape(-1, *edges_in.shape[1:])
        edges = np.concatenate([self.trunk.run([TRUNK_OUT], {TRUNK_IN: distinct[i:i + 512]})[0]
                                for i in range(0, len(distinct), 512)])
        edges = edges[which.reshape(-1)]  # (2 * windows, 32, EDGE, 80)

        # 3. the heads, on each window's pooled frames gathered from the trunk, edges replaced
        index, offset = [], 0
        for p in plans:
            index += [offset // 2 + p.pooled_index(s) for s in p.starts]
            offset += len(p.trunk_frames)
        raw = []
        for i in range(0, len(index), self.head_batch):
            n = len(index[i:i + self.head_batch])
            batch = np.stack([pooled[:, ix] for ix in index[i:i + n]])  # (n, 32, 450, 80)
            batch[:, :, :EDGE // 2] = edges[2 * i:2 * (i + n):2, :, :EDGE // 2]
            batch[:, :, -(EDGE // 2):] = edges[2 * i + 1:2 * (i + n):2, :, EDGE // 2:]
            raw.append(self.head.run([HEAD_OUT], {TRUNK_OUT: batch})[0])
        return np.concatenate(raw)


class _ClipPlan:
    """One clip's padded samples, the windows speechmos scores in it, and the frames the trunk runs on."""

    def __init__(self, wav: np.ndarray) -> None:
        audio = repeat_pad(wav)
        self.starts = window_starts(len(audio))
        self.frames = _frames(audio, self.starts[-1] // FRAME_HOP + FRAMES)  # every frame a window holds
        # A clip of an even number of frame hops (decoded samples: 320 samples per codec frame) repeats
        # every `period` frames once padded, and so do the trunk's outputs away from the ends: frames
        # [0, period + 2 * EDGE) give every value, output frame g being output EDGE + (g - EDGE) mod period.
        period = len(wav) // FRAME_HOP
        periodic = len(audio) > len(wav) and len(wav) % (2 * FRAME_HOP) == 0 and period + 2 * EDGE < len(self.frames)
        self.period = period if periodic else 0
        self.trunk_frames = self.frames[:self.period + 2 * EDGE] if self.period else self.frames  # even length

    def pooled_index(self, start: int) -> np.ndarray:
        """Indices into the clip's pooled trunk output of window `start`'s 450 pooled frames (the first and
        last EDGE / 2 are replaced by the edge computation)."""
        k = start // FRAME_HOP // 2 + np.arange(FRAMES // 2)
        if not self.period:
            return k
        e, half = EDGE // 2, self.period // 2
        return e + (k - e) % half

    def edge_frames(self) -> np.ndarray:
        out = []
        for s in self.starts:
            g = s // FRAME_HOP
            out += [self.frames[g:g + 2 * EDGE], self.frames[g + FRAMES - 2 * EDGE:g + FRAMES]]
        return np.stack(out)


def _frames(audio: np.ndarray, count: int) -> np.ndarray:
    """STFT frames 0..count-1 of the padded clip: frame g is samples [160 g, 160 g + 320)."""
    view = np.lib.stride_tricks.sliding_window_view(audio[:(count + 1) * FRAME_HOP], 2 * FRAME_HOP)
    return view[::FRAME_HOP][:count].astype(np.float32)


# ------------------------------------------------------------------------------- ONNX graph cuts


@lru_cache(maxsize=2)
def _read_model(path: str):
    import onnx  # noqa: PLC0415

    return onnx.load(path)


def _cut(model, input_name: str, input_shape: list[int], output_name: str) -> bytes:
    """The sub-graph of `model` that computes `output_name` from `input_name` (onnx's Extractor copies its
    nodes and weights as they are), as a serialized model; -1 in `input_shape` is a free dimension."""
    import onnx  # noqa: PLC0415
    from onnx.utils import Extractor  # noqa: PLC0415

    whole = onnx.ModelProto()
    whole.CopyFrom(model)
    dims = [d if d >= 0 else f"{input_name}:{i}" for i, d in enumerate(input_shape)]
    # the cut's ends are inner tensors, which the model declares no type for: declare them
    whole.graph.value_info.extend([onnx.helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, dims),
                                   onnx.helper.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT, None)])
    return Extractor(whole).extract_model([input_name], [output_name]).SerializeToString()
