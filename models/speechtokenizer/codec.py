"""SpeechTokenizer (the `speechtokenizer` package's model) as the product uses it.

A codec is an official-format `config.json` plus a checkpoint (a `torch.save`d state dict, or
safetensors). `encode` returns every RVQ layer; layer 1 carries content and is what the codec LM
speaks ("golden tokens" are the layer-1 codes of the real recording).

The demo codec is the SpeechTokenizer architecture at a small size: its encoder is distilled to
log-mel frames (`distill_encoder`) and its RVQ codebooks are fitted by residual k-means on the
demo corpus (`fit_codebooks`). A random codebook maps every frame to code 0 (the RVQ's codebooks start at
zero and `encode` never runs their k-means initialisation), and a random encoder gives codes that follow
waveform phase, not sound; this one gives codes that
follow what is said.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from speechtokenizer import SpeechTokenizer

from speechalign.models.audio import log_mel

# speechtokenizer builds its convolutions with the old weight_norm API; the warning is not ours to fix
warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)

# The official config's keys (fnlp/SpeechTokenizer config.json), at a size a CPU encodes quickly:
# 16 kHz, strides 8*5*4*2 = 320 samples per frame (50 Hz), 8 RVQ layers of 1024 codes.
# semantic_dimension is the distillation teacher's width: 80 log-mel bins here, HuBERT's 768 upstream.
DEMO_CODEC_CONFIG = {
    "n_filters": 16,
    "strides": [8, 5, 4, 2],
    "dimension": 128,
    "semantic_dimension": 80,
    "bidirectional": True,
    "dilation_base": 2,
    "residual_kernel_size": 3,
    "n_residual_layers": 1,
    "lstm_layers": 1,
    "activation": "ELU",
    "sample_rate": 16000,
    "codebook_size": 1024,
    "n_q": 8,
}
CONFIG_NAME = "config.json"
CHECKPOINT_NAME = "model.safetensors"


def load_codec(config_path: Path, checkpoint_path: Path) -> SpeechTokenizer:
    """Load a SpeechTokenizer from its config and checkpoint, in eval mode."""
    config_path, checkpoint_path = Path(config_path), Path(checkpoint_path)
    for path, what in ((config_path, "config"), (checkpoint_path, "checkpoint")):
        if not path.is_file():
            raise FileNotFoundError(
                f"codec {what} {path} does not exist; set [codec] config_path/checkpoint_path to a "
                "SpeechTokenizer config.json and its checkpoint, or leave both empty for the demo codec"
            )
    if checkpoint_path.suffix == ".safetensors":
        codec = SpeechTokenizer(json.loads(config_path.read_text()))
        state = load_file(str(checkpoint_path))
        for name, value in list(state.items()):  # saved without the EMA copies, which only training needs
            if name.endswith("._codebook.embed"):
                state.setdefault(name.removesuffix("embed") + "embed_avg", value.clone())
        codec.load_state_dict(state)
    else:
        codec = SpeechTokenizer.load_from_checkpoint(str(config_path), str(checkpoint_path))
    return codec.eval()


def frames_for(num_samples: int, codec: SpeechTokenizer) -> int:
    return math.ceil(num_samples / int(codec.downsample_rate))


@torch.inference_mode()
def encoder_features(codec: SpeechTokenizer, wavs: list[np.ndarray], batch_size: int = 16,
                     on_batch=None) -> list[torch.Tensor]:
    """Encoder outputs (frames, dimension) per waveform, batched by length with zero padding and trimmed back;
    `on_batch(n)` is told after each batch of n waveforms."""
    order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))
    out: list[torch.Tensor | None] = [None] * len(wavs)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        longest = max(len(wavs[i]) for i in idx)
        batch = torch.zeros(len(idx), 1, longest)
        for row, i in enumerate(idx):
            batch[row, 0, : len(wavs[i])] = torch.from_numpy(wavs[i])
        feats = codec.encoder(batch)  # (B, D, T)
        for row, i in enumerate(idx):
            out[i] = feats[row, :, : frames_for(len(wavs[i]), codec)].T.contiguous()
        if on_batch:
            on_batch(len(idx))
    return out  # type: ignore[return-value]


@torch.inference_mode()
def encode(codec: SpeechTokenizer, wavs: list[np.ndarray], batch_size: int = 16, on_batch=None) -> list[np.ndarray]:
    """RVQ codes per waveform as int arrays of shape (n_q, frames). The quantizer treats each frame on its own, so
    the frames of `batch_size` waveforms are quantized in one call, laid end to end (no padding)."""
    feats = encoder_features(codec, wavs, batch_size, on_batch)
    codes: list[np.ndarray | None] = [None] * len(feats)
    for start in range(0, len(feats), batch_size):
        group = feats[start:start + batch_size]
        layer_codes = codec.quantizer.vq.encode(torch.cat(group).T.unsqueeze(0), n_q=codec.n_q)[:, 0]  # (n_q, T)
        for i, part in enumerate(layer_codes.split([len(f) for f in group], dim=1), start=start):
            codes[i] = part.numpy().astype(np.int32)
    return codes  # type: ignore[return-value]


@torch.inference_mode()
def decode(codec: SpeechTokenizer, codes: np.ndarray) -> np.ndarray:
    """Waveform (float32, codec sample rate) from codes of shape (layers, frames); layers from 1."""
    tensor = torch.as_tensor(np.asarray(codes), dtype=torch.long).unsqueeze(1)  # (n, 1, T)
    return codec.decode(tensor)[0, 0].numpy()


def distill_encoder(codec: SpeechTokenizer, wavs: list[np.ndarray], steps: int, seed: int,
                    batch_size: int = 16, crop_frames: int = 100, lr: float = 2e-3) -> float:
    """Train the encoder so that its output, through the config's `transform` head, predicts each frame's
    log-mel spectrum (normalised per utterance).

    This is SpeechTokenizer's semantic distillation with log-mel frames as the teacher instead of
    HuBERT: it makes encoder features depend on what is said and not on waveform phase, so that
    k-means over them (`fit_codebooks`) gives layer-1 codes a language model can learn. Returns the
    last step's loss.
    """
    hop = int(codec.downsample_rate)
    targets = []
    for wav in wavs:
        mel = log_mel(torch.from_numpy(wav), codec.sample_rate, hop)[: frames_for(len(wav), codec)]
        targets.append((mel - mel.mean(0)) / (mel.std(0) + 1e-5))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    params = list(codec.encoder.parameters()) + list(codec.transform.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    codec.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        batch, target = [], []
        for i in rng.integers(0, len(wavs), batch_size):
            frames = len(targets[i])
            start = int(rng.integers(0, max(1, frames - crop_frames)))
            n = min(crop_frames, frames)
            piece = np.zeros(crop_frames * hop, dtype=np.float32)
            chunk = wavs[i][start * hop:(start + n) * hop]
            piece[: len(chunk)] = chunk
            batch.append(torch.from_numpy(piece))
            t = torch.zeros(crop_frames, targets[i].shape[1])
            t[:n] = targets[i][start:start + n]
            target.append(t)
        feats = codec.encoder(torch.stack(batch).unsqueeze(1)).transpose(1, 2)  # (B, T, D)
        loss = torch.nn.functional.mse_loss(codec.transform(feats), torch.stack(target))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    codec.eval()
    return float(loss)


def fit_codebooks(codec: SpeechTokenizer, wavs: list[np.ndarray], seed: int, layer1_codes: int,
                  max_frames: int = 60000) -> dict:
    """Fit every RVQ layer's codebook by k-means on the residual left by the layers before it.

    Layer 1 gets `layer1_codes` centroids (coarse, content-like classes an LM can learn from a
    small corpus); its remaining entries repeat them, and since encoding picks the first nearest
    entry, they are never produced. Layers 2..8 use the whole book for the acoustic detail.
    Returns per-layer usage figures (distinct codes used on the fitting data) for the model card.
    """
    feats = torch.cat(encoder_features(codec, wavs))
    if len(feats) > max_frames:
        keep = torch.randperm(len(feats), generator=torch.Generator().manual_seed(seed))[:max_frames]
        feats = feats[keep]
    from sklearn.cluster import MiniBatchKMeans  # noqa: PLC0415 - 2 s to import; only codec training fits codebooks

    residual = feats.clone()
    usage = []
    for number, layer in enumerate(codec.quantizer.vq.layers):
        book = layer._codebook
        size = layer1_codes if number == 0 else book.codebook_size
        if len(residual) < size:
            raise ValueError(
                f"fitting {size} codes needs at least {size} frames, got {len(residual)}; give the codec more audio"
            )
        km = MiniBatchKMeans(n_clusters=size, random_state=seed, batch_size=4096, n_init=1,
                             max_iter=20, init="k-means++", init_size=3 * size)
        labels = km.fit_predict(residual.numpy())
        centers = torch.from_numpy(km.cluster_centers_).float()
        counts = torch.bincount(torch.from_numpy(labels).long(), minlength=size).float()
        repeat = torch.arange(book.codebook_size) % size
        book.embed.copy_(centers[repeat])
        book.embed_avg.copy_(centers[repeat])
        book.cluster_size.copy_(torch.where(torch.arange(book.codebook_size) < size, counts[repeat], 0.0))
        book.inited.fill_(1.0)
        residual = residual - centers[labels]
        usage.append(int((counts > 0).sum()))
    return {"frames": int(len(feats)), "codes_used_per_layer": usage}


def save_codec(codec: SpeechTokenizer, config: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path, checkpoint_path = out_dir / CONFIG_NAME, out_dir / CHECKPOINT_NAME
    config_path.write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in codec.state_dict().items() if not k.endswith("embed_avg")}
    save_file(state, str(checkpoint_path))
    return config_path, checkpoint_path


def build_demo_codec(wavs: list[np.ndarray], out_dir: Path, seed: int, distill_steps: int,
                     layer1_codes: int) -> tuple[Path, Path, dict]:
    """The demo SpeechTokenizer: encoder distilled to log-mel, codebooks fitted to `wavs`, saved in official format."""
    torch.manual_seed(seed)
    codec = SpeechTokenizer(DEMO_CODEC_CONFIG)
    report = {"distill_steps": distill_steps, "distill_loss": distill_encoder(codec, wavs, distill_steps, seed)}
    report.update(fit_codebooks(codec, wavs, seed, layer1_codes))
    config_path, checkpoint_path = save_codec(codec, DEMO_CODEC_CONFIG, out_dir)
    return config_path, checkpoint_path, report
