"""The acoustic stage: layer-1 codec units (what the codec LM speaks) -> the remaining RVQ layers.

SpeechAlign decodes its codec LM's layer-1 tokens with SoundStorm, a non-autoregressive model that
fills in the acoustic layers. This is that stage at demo size: a bidirectional Transformer that
predicts RVQ layer q+1 from layers 1..q and the speaker, for every frame at once; inference runs
it once per layer, coarse to fine (7 passes for 8 layers), taking the most likely code. Bootstrap
trains it on the train split's golden tokens (all layers come from encoding the real recordings),
so it never sees held-out audio.
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
    n_q: int = 8
    codebook_size: int = 1024
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
        self.codes = nn.ModuleList([nn.Embedding(c.codebook_size, c.dim) for _ in range(c.n_q - 1)])
        self.level = nn.Embedding(c.n_q, c.dim)
        self.speaker = nn.Embedding(len(c.speakers) + 1, c.dim)
        self.local = nn.Conv1d(c.dim, c.dim, 5, padding=2, groups=c.dim)  # neighbouring frames, cheaply
        layer = nn.TransformerEncoderLayer(c.dim, c.heads, 4 * c.dim, c.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.dim)
        self.heads = nn.ModuleList([nn.Linear(c.dim, c.codebook_size) for _ in range(c.n_q - 1)])

    def speaker_ids(self, speakers: list[str | None]) -> torch.Tensor:
        index = {name: i + 1 for i, name in enumerate(self.config.speakers)}
        return torch.tensor([index.get(s or "", 0) for s in speakers], dtype=torch.long)

    def forward(self, known: torch.Tensor, speaker: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, codebook) of layer q+1 from the codes of layers 1..q.

        known (B, q, T); pad (B, T) is True on padding."""
        q = known.shape[1]
        x = sum(self.codes[i](known[:, i]) for i in range(q))
        x = x + self.level.weight[q] + self.speaker(speaker)[:, None] + positions(known.shape[2], self.config.dim).to(x)
        x = x + self.local(x.transpose(1, 2)).transpose(1, 2)
        return self.heads[q - 1](self.norm(self.encoder(x, src_key_padding_mask=pad)))

    @torch.inference_mode()
    def predict(self, layer1: list[list[int]], speakers: list[str | None], batch_size: int = 32) -> list[np.ndarray]:
        """All layers (n_q, frames) for each layer-1 sequence, coarse to fine with the most likely code."""
        self.eval()
        out: list[np.ndarray | None] = [None] * len(layer1)
        order = sorted(range(len(layer1)), key=lambda i: len(layer1[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            longest = max(1, max(len(layer1[i]) for i in idx))
            codes = torch.zeros(len(idx), self.config.n_q, longest, dtype=torch.long)
            pad = torch.ones(len(idx), longest, dtype=torch.bool)
            for row, i in enumerate(idx):
                codes[row, 0, : len(layer1[i])] = torch.as_tensor(layer1[i], dtype=torch.long)
                pad[row, : len(layer1[i])] = False
            speaker = self.speaker_ids([speakers[i] for i in idx])
            for q in range(1, self.config.n_q):
                codes[:, q] = self(codes[:, :q], speaker, pad).argmax(-1)
            for row, i in enumerate(idx):
                out[i] = codes[row, :, : len(layer1[i])].numpy().astype(np.int32)
        return out  # type: ignore[return-value]

    def save(self, out_dir: Path, report: dict | None = None) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(out_dir / WEIGHTS_NAME))
        (out_dir / CONFIG_NAME).write_text(json.dumps({"config": asdict(self.config), "training": report or {}},
                                                      indent=2))
        return out_dir


def is_saved_acoustic(path: Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file() and (Path(path) / WEIGHTS_NAME).is_file()


def load_acoustic(path: Path) -> AcousticStage:
    path = Path(path)
    if not is_saved_acoustic(path):
        raise FileNotFoundError(f"no acoustic stage in {path}; `speechalign bootstrap` trains one "
                                "(or set codec.acoustic = \"layer1_only\")")
    model = AcousticStage(AcousticConfig(**json.loads((path / CONFIG_NAME).read_text())["config"]))
    model.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
    return model.eval()


def train_acoustic(golden: list[np.ndarray], speakers: list[str | None], config: AcousticConfig, steps: int,
                   seed: int, batch_size: int = 16, crop_frames: int = 100, lr: float = 2e-3,
                   log=None, on_step=None, device: str = "cpu") -> tuple[AcousticStage, dict]:
    """Fit the stage on golden codes (n_q, frames) with their speakers: each step picks one layer to predict
    from the ones below it (teacher forcing), cross-entropy over the frames of random crops. The model comes
    back on the CPU, whichever `device` trained it."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = AcousticStage(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    speaker_ids = model.speaker_ids(speakers).to(device)
    model.train()
    started, history = time.monotonic(), []
    for step in range(1, steps + 1):
        q = int(rng.integers(1, config.n_q))  # predict layer q+1 from layers 1..q
        idx = rng.integers(0, len(golden), batch_size)
        codes = torch.zeros(batch_size, config.n_q, crop_frames, dtype=torch.long)
        pad = torch.ones(batch_size, crop_frames, dtype=torch.bool)
        for row, i in enumerate(idx):
            frames = golden[i].shape[1]
            start = int(rng.integers(0, max(1, frames - crop_frames + 1)))
            piece = torch.from_numpy(golden[i][:, start:start + crop_frames].astype(np.int64))
            codes[row, :, : piece.shape[1]] = piece
            pad[row, : piece.shape[1]] = False
        codes, pad = codes.to(device), pad.to(device)
        logits = model(codes[:, :q], speaker_ids[torch.from_numpy(idx).to(device)], pad)
        loss = nn.functional.cross_entropy(logits[~pad], codes[:, q][~pad])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if on_step:
            on_step(step, float(loss.detach()))
        if step % 100 == 0 or step == steps:
            history.append({"step": step, "layer": q + 1, "loss": float(loss.detach())})
            if log:
                log(f"acoustic stage: step {step}/{steps}, loss {float(loss.detach()):.3f} (layer {q + 1})")
    model.cpu().eval()
    report = {"steps": steps, "utterances": len(golden), "seconds": time.monotonic() - started,
              "parameters": sum(p.numel() for p in model.parameters()), "history": history}
    return model, report


@torch.inference_mode()
def layer_accuracy(model: AcousticStage, golden: list[np.ndarray], speakers: list[str | None]) -> list[float]:
    """Per layer 2..n_q, the share of frames where the prediction from golden layer 1 matches the golden code."""
    predicted = model.predict([g[0].tolist() for g in golden], speakers)
    hits = np.zeros(model.config.n_q - 1)
    total = 0
    for p, g in zip(predicted, golden):
        hits += (p[1:] == g[1:]).sum(axis=1)
        total += g.shape[1]
    return (hits / max(1, total)).tolist()
