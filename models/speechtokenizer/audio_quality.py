"""Audio quality figures for decoded speech: DNSMOS (speechmos), speaker similarity (resemblyzer) and
spectral distances (log-mel L1, mel-cepstral distortion) between time-aligned waveforms.

The models ship inside their PyPI packages (speechmos: DNSMOS's ONNX networks; resemblyzer: its speaker
encoder) and are loaded once per process. DNSMOS and
speaker similarity are the metric plug-ins' implementations (models/metrics/dnsmos.py, speaker.py), one
clip at a time here.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from speechalign.models.audio import log_mel
from speechalign.models.metrics import get_metric

SAMPLE_RATE = 16000
HOP = 160  # 10 ms frames for the spectral distances
CEPSTRA = 24  # mel-cepstral coefficients 1..24 (c0, the loudness, left out as MCD usually does)


def dnsmos(wav: np.ndarray) -> dict[str, float]:
    """DNSMOS P.835 (SIG, BAK, OVRL) of a 16 kHz clip: speechmos's values, through the batched scorer
    of the `dnsmos` metric plug-in (models/metrics/dnsmos.py)."""
    return get_metric("dnsmos").clips([wav])[0]


def speaker_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of resemblyzer speaker embeddings (unit length): 1 is the same voice."""
    ea, eb = get_metric("speaker_similarity").embed([a, b])
    return float(np.dot(ea, eb))


def _aligned_log_mel(ref: np.ndarray, out: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(len(ref), len(out))
    if n < 4 * HOP:
        raise ValueError(f"clips of {n} samples are too short to compare")
    mels = log_mel(torch.from_numpy(np.stack([ref[:n], out[:n]]).astype(np.float32)), SAMPLE_RATE, HOP, n_fft=1024)
    return mels[0], mels[1]


def log_mel_l1(ref: np.ndarray, out: np.ndarray) -> float:
    """Mean absolute difference of natural-log mel energies (80 bands, 10 ms frames)."""
    a, b = _aligned_log_mel(ref, out)
    return float((a - b).abs().mean())


def mel_cepstral_distortion(ref: np.ndarray, out: np.ndarray) -> float:
    """MCD in dB, 10/ln10 * sqrt(2 * sum_k (c_k - c'_k)^2), over mel-cepstra c_1..c_24 of the log mel amplitude
    (c_k = mean over the 80 bands of log|X| cos(pi k (m + 1/2) / 80)), on frames where the reference has speech.
    Waveforms are time-aligned (a reconstruction), so no DTW."""
    a, b = _aligned_log_mel(ref, out)
    n = a.shape[1]
    k = torch.arange(n, dtype=torch.float32)
    dct = torch.cos(math.pi / n * (k[None, :] + 0.5) * torch.arange(1, CEPSTRA + 1, dtype=torch.float32)[:, None])
    ca, cb = 0.5 * a @ dct.T / n, 0.5 * b @ dct.T / n  # log power -> log amplitude
    energy = a.logsumexp(1)
    voiced = energy > energy.max() - math.log(1e4)  # within 40 dB of the loudest frame
    dist = (10 / math.log(10)) * torch.sqrt(2 * ((ca - cb) ** 2).sum(1))
    return float(dist[voiced].mean())


def white_noise_like(wav: np.ndarray, seed: int = 0) -> np.ndarray:
    """White noise at the clip's RMS loudness: the trivial baseline that gives a distance meaning."""
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
    return (np.random.default_rng(seed).standard_normal(len(wav)) * rms).astype(np.float32)
