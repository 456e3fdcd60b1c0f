"""Audio I/O without torchaudio: soundfile + scipy. PyPI's torchaudio needs CUDA's libraries to import, and an
installed torchaudio that cannot import breaks `import transformers` on a CPU machine.

scipy, torch and transformers are imported by the functions that need them: the metric plug-ins'
registry imports this module, and so does every command that validates a config."""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def resample(audio: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling of a mono float signal; a no-op at the target rate."""
    if rate == target_rate:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly  # noqa: PLC0415 - see the module's docstring

    ratio = Fraction(target_rate, rate)
    return resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)


def log_mel(audio: torch.Tensor, sample_rate: int, hop: int, n_mels: int = 80, n_fft: int = 1024) -> torch.Tensor:
    """Log-mel frames (..., frames, n_mels) of a waveform batch (..., samples), one frame per `hop` samples."""
    import torch  # noqa: PLC0415 - see the module's docstring

    spec = torch.stft(audio.reshape(-1, audio.shape[-1]), n_fft, hop_length=hop, win_length=n_fft,
                      window=torch.hann_window(n_fft, device=audio.device), center=True, return_complex=True)
    power = spec.abs().pow(2).transpose(1, 2)  # (B, frames, bins)
    mels = power @ _mel_basis(n_fft // 2 + 1, n_mels, sample_rate).to(audio.device)
    return torch.log(mels + 1e-5).reshape(*audio.shape[:-1], -1, n_mels)


@lru_cache(maxsize=8)
def _mel_basis(bins: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    import torch  # noqa: PLC0415 - see the module's docstring
    from transformers.audio_utils import mel_filter_bank  # noqa: PLC0415

    return torch.from_numpy(
        mel_filter_bank(num_frequency_bins=bins, num_mel_filters=n_mels, min_frequency=0.0,
                        max_frequency=sample_rate / 2, sampling_rate=sample_rate, norm="slaney", mel_scale="slaney")
    ).float()
