"""Training the demo codec's decoder: RVQ codes back to a 16 kHz waveform.

The encoder and codebooks stay frozen (`models/speechtokenizer/codec.py` made them); only the SEANet decoder of the
SpeechTokenizer learns, from the quantized sum of all 8 RVQ layers, with the reconstruction losses of
the SpeechTokenizer and EnCodec papers: a multi-resolution STFT loss (spectral convergence + log
magnitude, windows 256 to 2048) and an L1 loss on log-mel frames. Training saves a resumable state
(decoder, optimizer, schedule, step) so a long run can stop and go on in another session.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from speechtokenizer import SpeechTokenizer

from speechalign.models.audio import log_mel
from speechalign.models.speechtokenizer.codec import DEMO_CODEC_CONFIG, encode, save_codec

STFT_WINDOWS = (256, 512, 1024, 2048)
MEL_WEIGHT = 4.0


def stft_loss(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT loss between waveform batches (B, samples): spectral convergence + log-magnitude L1."""
    total = out.new_zeros(())
    for n_fft in STFT_WINDOWS:
        window = torch.hann_window(n_fft, device=out.device)
        mag = [torch.stft(x, n_fft, hop_length=n_fft // 4, window=window, return_complex=True).abs().clamp_min(1e-5)
               for x in (out, ref)]
        convergence = torch.linalg.norm(mag[1] - mag[0]) / torch.linalg.norm(mag[1]).clamp_min(1e-5)
        total = total + convergence + (mag[0].log() - mag[1].log()).abs().mean()
    return total / len(STFT_WINDOWS)


def mel_loss(out: torch.Tensor, ref: torch.Tensor, sample_rate: int) -> torch.Tensor:
    return (log_mel(out, sample_rate, 256) - log_mel(ref, sample_rate, 256)).abs().mean()


def reconstruction_loss(out: torch.Tensor, ref: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, dict]:
    stft, mel = stft_loss(out, ref), mel_loss(out, ref, sample_rate)
    return stft + MEL_WEIGHT * mel, {"stft": float(stft.detach()), "mel_l1": float(mel.detach())}


class DecoderTrainer:
    """Trains `codec.decoder` on crops of (quantized frames, waveform) pairs; `run` can be called again after a load."""

    def __init__(self, codec: SpeechTokenizer, wavs: list[np.ndarray], total_steps: int, seed: int,
                 batch_size: int = 16, crop_frames: int = 40, lr: float = 1e-3):
        self.codec, self.wavs, self.total_steps = codec, wavs, total_steps
        self.batch_size, self.crop_frames, self.hop = batch_size, crop_frames, int(codec.downsample_rate)
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        codes = encode(codec, wavs)
        with torch.no_grad():  # frozen encoder + RVQ: the decoder's inputs never change, compute them once
            self.frames = [codec.quantizer.decode(torch.from_numpy(c).long().unsqueeze(1))[0] for c in codes]
        for p in codec.parameters():
            p.requires_grad_(False)
        for p in codec.decoder.parameters():
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(codec.decoder.parameters(), lr=lr, betas=(0.8, 0.99))
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=lr, total_steps=total_steps,
                                                            pct_start=0.05)
        self.step = 0
        self.history: list[dict] = []

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        feats, audio = [], []
        for i in self.rng.integers(0, len(self.wavs), self.batch_size):
            frames = self.frames[i]
            start = int(self.rng.integers(0, max(1, frames.shape[1] - self.crop_frames)))
            f = torch.zeros(frames.shape[0], self.crop_frames)
            piece = frames[:, start:start + self.crop_frames]
            f[:, : piece.shape[1]] = piece
            a = np.zeros(self.crop_frames * self.hop, dtype=np.float32)
            chunk = self.wavs[i][start * self.hop:(start + self.crop_frames) * self.hop]
            a[: len(chunk)] = chunk
            feats.append(f)
            audio.append(torch.from_numpy(a))
        return torch.stack(feats), torch.stack(audio)

    def run(self, until: int, log_every: int = 50, on_log=None) -> None:
        self.codec.decoder.train()
        started = time.monotonic()
        while self.step < min(until, self.total_steps):
            feats, audio = self.batch()
            out = self.codec.decoder(feats)[:, 0, : audio.shape[1]]
            loss, parts = reconstruction_loss(out, audio, self.codec.sample_rate)
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.codec.decoder.parameters(), 10.0)
            self.optimizer.step()
            self.schedule.step()
            self.step += 1
            if self.step % log_every == 0 or self.step == self.total_steps:
                entry = {"step": self.step, "loss": float(loss.detach()), **parts,
                         "seconds_per_step": (time.monotonic() - started) / log_every}
                started = time.monotonic()
                self.history.append(entry)
                if on_log:
                    on_log(entry)
        self.codec.decoder.eval()

    def state(self) -> dict:
        return {"decoder": self.codec.decoder.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "step": self.step, "history": self.history,
                "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state()}

    def save(self, path: Path) -> None:
        tmp = Path(path).with_suffix(".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(path)

    def load(self, path: Path) -> None:
        state = torch.load(path, weights_only=False)
        self.codec.decoder.load_state_dict(state["decoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step, self.history = state["step"], state["history"]
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])


def train_decoder(codec: SpeechTokenizer, wavs: list[np.ndarray], steps: int, seed: int, out_dir: Path,
                  save_every: int = 500, log=print) -> dict:
    """Train the decoder for `steps`, resuming from `out_dir/decoder_state.pt` when a run stopped; saves the codec
    at every `save_every` steps so a long run can be listened to (and measured) while it goes on."""
    state_path = Path(out_dir) / "decoder_state.pt"
    trainer = DecoderTrainer(codec, wavs, steps, seed)
    if state_path.exists():
        trainer.load(state_path)
        log(f"resuming decoder training at step {trainer.step} of {steps}")
    started = time.monotonic()
    while trainer.step < steps:
        trainer.run(trainer.step + save_every, on_log=lambda e: log(
            f"step {e['step']}: loss {e['loss']:.3f} stft {e['stft']:.3f} mel_l1 {e['mel_l1']:.3f} "
            f"({e['seconds_per_step']:.2f} s/step)"))
        trainer.save(state_path)
        save_codec(codec, DEMO_CODEC_CONFIG, Path(out_dir))
    last = trainer.history[-1] if trainer.history else {}
    return {"steps": trainer.step, "batch": f"{trainer.batch_size} x {trainer.crop_frames / 50:.1f} s",
            "last_stft": last.get("stft"), "last_mel_l1": last.get("mel_l1"),
            "minutes_this_run": (time.monotonic() - started) / 60, "history": trainer.history}
