"""Tiny transformers codecs with random weights, built here in about a second each and saved with save_pretrained, so
the tests load them the way a user's codec loads (`[codec] kind` and `path`).

A random codec's codes say nothing about speech, but every code path is the real one. Random weights alone give
degenerate codes, so each is calibrated before it is saved: Mimi's and EnCodec's RVQ codebooks are zero buffers (every
frame would be code 0) and are seeded from the encoder's own frames of a test signal; X-codec2's and NeuCodec's FSQ
input barely moves over time (one code for every frame) and its projection is rescaled to spread it over the levels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SEMANTIC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                output_hidden_size=32, conv_depthwise_kernel_size=5)
FSQ = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
           head_dim=16, encoder_hidden_size=8, quantization_dim=64 + 32, semantic_model_config=SEMANTIC)
CONFIGS = {
    "xcodec2": FSQ,
    "neucodec": FSQ,
    "mimi": dict(hidden_size=32, num_filters=4, num_residual_layers=1, upsampling_ratios=[8, 6, 5, 4],
                 codebook_size=2048, codebook_dim=16, vector_quantization_hidden_dimension=16, num_quantizers=8,
                 num_semantic_quantizers=1, upsample_groups=32, num_hidden_layers=1, intermediate_size=64,
                 num_attention_heads=2, num_key_value_heads=2),
    "dac": dict(encoder_hidden_size=4, downsampling_ratios=[2, 4, 5, 8], decoder_hidden_size=32, n_codebooks=4,
                codebook_size=1024, codebook_dim=8, sampling_rate=16000),
    "encodec": dict(sampling_rate=24000, hidden_size=32, num_filters=4, num_residual_layers=1, num_lstm_layers=1,
                    upsampling_ratios=[8, 5, 4, 2], codebook_size=1024, target_bandwidths=[1.5, 3.0, 6.0]),
}
KINDS = tuple(CONFIGS)


def test_signal(rate: int, seconds: float = 2.0) -> np.ndarray:
    """A vowel-like signal: harmonics of a gliding pitch and a little noise."""
    t = np.arange(int(rate * seconds)) / rate
    pitch = 120 + 60 * t / seconds
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    wav = sum(np.sin(h * phase) / h for h in range(1, 6)) * 0.2
    return (wav + 0.02 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)


@torch.no_grad()
def _seed_rvq(layers, frames: torch.Tensor, seed: int = 0) -> None:
    """Each RVQ layer's codebook from the residual frames the layers before it leave (with jitter), k-means' first
    step: codes then follow the signal."""
    g = torch.Generator().manual_seed(seed)
    for layer in layers:
        book = layer.codebook
        pick = torch.randint(0, len(frames), (book.embed.shape[0],), generator=g)
        book.embed.copy_(frames[pick] + 0.3 * frames.std(0) * torch.randn(book.embed.shape, generator=g))
        if hasattr(book, "embed_avg"):
            book.embed_avg.copy_(book.embed)
        if hasattr(book, "embed_sum"):
            book.embed_sum.copy_(book.embed)
        if hasattr(book, "cluster_usage"):
            book.cluster_usage.fill_(1.0)
        if hasattr(book, "_embed"):
            book._embed = None
        frames = frames - book.embed[torch.cdist(frames, book.embed).argmin(-1)]


@torch.no_grad()
def _calibrate(kind: str, model) -> None:
    if kind in ("xcodec2", "neucodec"):
        from speechalign.models.codecs.transformers_codecs import CODECS

        codec = CODECS[kind](model, 1)
        seen = {}
        hook = model.quantizer.project_in.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
        model.encode(**codec.inputs(test_signal(16000)))
        hook.remove()
        out = seen["out"][0]  # (frames, FSQ dimensions)
        scale = 2.0 / (out.std(0) + 1e-12)
        project = model.quantizer.project_in
        project.weight.mul_(scale[:, None])
        project.bias.copy_((project.bias - out.mean(0)) * scale)
    elif kind == "mimi":
        x = torch.from_numpy(test_signal(model.config.sampling_rate))[None, None]
        latent = model.encoder(x).latents  # (1, hidden, frames): what the split RVQ quantizes
        for rvq in (model.quantizer.semantic_residual_vector_quantizer,
                    model.quantizer.acoustic_residual_vector_quantizer):
            _seed_rvq(rvq.layers, rvq.input_proj(latent)[0].T)
    elif kind == "encodec":
        x = torch.from_numpy(test_signal(model.config.sampling_rate))[None, None]
        _seed_rvq(model.quantizer.layers, model.encoder(x)[0].T)


def build_codec(kind: str, folder: Path) -> Path:
    """A tiny `kind` codec saved in `folder` (from_pretrained loads it)."""
    import transformers

    config_class = {"xcodec2": transformers.Xcodec2Config, "neucodec": transformers.NeuCodecConfig,
                    "mimi": transformers.MimiConfig, "dac": transformers.DacConfig,
                    "encodec": transformers.EncodecConfig}[kind]
    model_class = {"xcodec2": transformers.Xcodec2Model, "neucodec": transformers.NeuCodecModel,
                   "mimi": transformers.MimiModel, "dac": transformers.DacModel,
                   "encodec": transformers.EncodecModel}[kind]
    torch.manual_seed(0)
    model = model_class(config_class(**CONFIGS[kind])).eval()
    _calibrate(kind, model)
    model.save_pretrained(folder)
    return folder
