"""The acoustic stage: layer-1 codec units (what the codec LM speaks) -> the latent the codec's decoder reads.

SpeechAlign decodes its codec LM's layer-1 tokens with SoundStorm, a non-autoregressive model that fills in
the acoustic RVQ layers. This stage plays that role at demo size, and predicts what the layers add up to
rather than each layer's code: a bidirectional Transformer reads the layer-1 units and the speaker and
regresses, for every frame at once, the quantized latent of all RVQ layers (the sum of their codebook
vectors, which is what the decoder turns into a waveform), with an L1 + squared error loss.

Why a regression: the demo codec's layers 2..8 are not predictable code by code from layer 1. A stage that
classified each next layer's code (7 passes, most likely code) got 2-23% of them right on held-out audio,
and its audio was hardly more intelligible than layer 1 alone; the latent keeps what layer 1 and its
context determine (the README's ceiling rows have the figures). Bootstrap trains it on the golden tokens of
every utterance that is not held out, so it never sees held-out audio.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "acoustic.json"
WEIGHTS_NAME = "acoustic.safetensors"


@dataclass
class AcousticConfig:
    codebook_size: int = 1024  # layer-1 units
    latent_dim: int = 128  # the codec's dimension: what its decoder reads
    dim: int = 128
    layers: int = 3
    heads: int = 4
    dropout: float = 0.1
    speakers: list[str] = field(default_factory=list)  # index + 1 is the speaker's id; 0 is an unknown speaker


def positions(frames: int, dim: int) -> torch.Tensor:
    """Sinusoidal position encodings (frames, dim): no length limit."""
    pos = torch.arange(frames, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    enc = torch.zeros(frames, dim)
    enc[:, 0::2], enc[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return enc


class AcousticStage(nn.Module):
    def __init__(self, config: AcousticConfig):
        super().__init__()
        c = self.config = config
        self.units = nn.Embedding(c.codebook_size, c.dim)
        self.speaker = nn.Embedding(len(c.speakers) + 1, c.dim)
        self.local = nn.Conv1d(c.dim, c.dim, 5, padding=2, groups=c.dim)  # neighbouring frames, cheaply
        layer = nn.TransformerEncoderLayer(c.dim, c.heads, 4 * c.dim, c.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, c.latent_dim))

    def speaker_ids(self, speakers: list[str | None]) -> torch.Tensor:
        index = {name: i + 1 for i, name in enumerate(self.config.speakers)}
        return torch.tensor([index.get(s or "", 0) for s in speakers], dtype=torch.long)

    def forward(self, units: torch.Tensor, speaker: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """The latent (B, T, latent_dim) of layer-1 units (B, T); pad (B, T) is True on padding."""
        x = self.units(units) + self.speaker(speaker)[:, None] + positions(units.shape[1], self.config.dim).to(
            self.units.weight)
        x = x + self.local(x.transpose(1, 2)).transpose(1, 2)
        return self.head(self.encoder(x, src_key_padding_mask=pad))

    @torch.inference_mode()
    def predict(self, layer1: list[list[int]], speakers: list[str | None], batch_size: int = 32) -> list[np.ndarray]:
        """The latent (latent_dim, frames) of each layer-1 sequence, in batches of similar length."""
        self.eval()
        out: list[np.ndarray | None] = [None] * len(layer1)
        order = sorted(range(len(layer1)), key=lambda i: len(layer1[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            units, pad = padded([np.asarray(layer1[i], dtype=np.int64) for i in idx])
            latent = self(units, self.speaker_ids([speakers[i] for i in idx]), pad)
            for row, i in enumerate(idx):
                out[i] = latent[row, : len(layer1[i])].T.numpy().astype(np.float32)
        return out  # type: ignore[return-value]

    def save(self, out_dir: Path, report: dict | None = None) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(out_dir / WEIGHTS_NAME))
        (out_dir / CONFIG_NAME).write_text(json.dumps({"config": asdict(self.config), "training": report or {}},
                                                      indent=2))
        return out_dir


def padded(sequences: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit sequences as one (B, longest) tensor, and its padding mask (True on padding)."""
    longest = max(1, max(len(s) for s in sequences))
    units = torch.zeros(len(sequences), longest, dtype=torch.long)
    pad = torch.ones(len(sequences), longest, dtype=torch.bool)
    for row, s in enumerate(sequences):
        units[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        pad[row, : len(s)] = False
    return units, pad


def is_saved_acoustic(path: Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file() and (Path(path) / WEIGHTS_NAME).is_file()


def load_acoustic(path: Path) -> AcousticStage:
    path = Path(path)
    if not is_saved_acoustic(path):
        raise FileNotFoundError(f"no acoustic stage in {path}; `speechalign bootstrap` trains one "
                                "(or set codec.acoustic = \"layer1_only\")")
    saved = json.loads((path / CONFIG_NAME).read_text())["config"]
    if "latent_dim" not in saved:
        raise ValueError(f"{path} holds an acoustic stage of an earlier kind (one code per RVQ layer); delete the "
                         "directory and run `speechalign bootstrap` again to train the current one")
    model = AcousticStage(AcousticConfig(**saved))
    model.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
    return model.eval()


def train_acoustic(units: list[np.ndarray], latents: list[np.ndarray], speakers: list[str | None],
                   config: AcousticConfig, steps: int, seed: int, batch_size: int = 16, crop_frames: int = 100,
                   lr: float = 2e-3, log=None, on_step=None, device: str = "cpu") -> tuple[AcousticStage, dict]:
    """Fit the stage on golden layer-1 units (frames,) and the latents of all their layers (latent_dim, frames):
    L1 + squared error over the frames of random crops. The model comes back on the CPU, whichever `device`
    trained it."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = AcousticStage(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    speaker_ids = model.speaker_ids(speakers).to(device)
    model.train()
    started, history = time.monotonic(), []
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(units), batch_size)
        crops = [int(rng.integers(0, max(1, len(units[i]) - crop_frames + 1))) for i in idx]
        batch, pad = padded([units[i][s:s + crop_frames] for i, s in zip(idx, crops)])
        target = torch.zeros(batch_size, batch.shape[1], config.latent_dim)
        for row, (i, s) in enumerate(zip(idx, crops)):
            piece = torch.from_numpy(np.ascontiguousarray(latents[i][:, s:s + crop_frames].T))
            target[row, : len(piece)] = piece
        batch, pad, target = batch.to(device), pad.to(device), target.to(device)
        error = (model(batch, speaker_ids[torch.from_numpy(idx).to(device)], pad) - target)[~pad]
        loss = error.abs().mean() + error.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if on_step:
            on_step(step, float(loss.detach()))
        if step % 100 == 0 or step == steps:
            history.append({"step": step, "loss": float(loss.detach())})
            if log:
                log(f"acoustic stage: step {step}/{steps}, loss {float(loss.detach()):.3f}")
    model.cpu().eval()
    report = {"steps": steps, "utterances": len(units), "seconds": time.monotonic() - started,
              "parameters": sum(p.numel() for p in model.parameters()), "history": history}
    return model, report


def latent_error(predicted: list[np.ndarray], latents: list[np.ndarray]) -> float:
    """Mean absolute error per latent value over all frames, between predicted and true latents (latent_dim, T)."""
    total = sum(float(np.abs(p - t).sum()) for p, t in zip(predicted, latents))
    return total / max(1, sum(t.size for t in latents))
