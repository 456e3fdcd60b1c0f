"""`speechalign train-codec`: make the demo codec from a corpus and write its model card.

The demo ships the result in models/demo_codec/, so a demo run never trains a codec.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from speechalign.bootstrap.import_corpus import read_manifest
from speechalign.models.speechtokenizer.codec import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    DEMO_CODEC_CONFIG,
    build_demo_codec,
    encode,
    load_codec,
)
from speechalign.models.speechtokenizer.decoder_training import train_decoder


def layer1_change_rate(codes: list[np.ndarray]) -> float:
    """Share of frames whose layer-1 code differs from the frame before: lower is easier for an LM."""
    return float(np.mean([np.mean(c[0][1:] != c[0][:-1]) for c in codes if c.shape[1] > 1]))


def train_demo_codec(manifest: str, out: str, distill_steps: int, layer1_codes: int, seed: int,
                     decoder_steps: int = 0, start_from: str | None = None) -> str:
    """Encoder + codebooks (or those of `start_from`, an existing codec directory), then the decoder."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, problems = read_manifest(Path(manifest), DEMO_CODEC_CONFIG["sample_rate"], 0.3, 20.0, out_dir / "repaired")
    if problems:
        raise ValueError(f"{manifest}: {len(problems)} rows need attention before training a codec: {problems[0]}")
    wavs = [r.audio for r in rows]
    started = time.monotonic()
    if start_from:
        source = Path(start_from)
        report = json.loads((source / "training.json").read_text())
        if source.resolve() != out_dir.resolve():
            for name in (CONFIG_NAME, CHECKPOINT_NAME):
                shutil.copyfile(source / name, out_dir / name)
        config_path, checkpoint_path = out_dir / CONFIG_NAME, out_dir / CHECKPOINT_NAME
    else:
        config_path, checkpoint_path, report = build_demo_codec(wavs, out_dir, seed, distill_steps, layer1_codes)
    minutes = (time.monotonic() - started) / 60
    codec = load_codec(config_path, checkpoint_path)
    if decoder_steps:
        decoder = train_decoder(codec, wavs, decoder_steps, seed, out_dir)
        report["decoder"] = {k: v for k, v in decoder.items() if k != "history"}
        (out_dir / "decoder_history.json").write_text(json.dumps(decoder["history"]))
        minutes += decoder["minutes_this_run"]
    codes = encode(codec, wavs)
    report.update({"utterances": len(wavs), "hours_of_audio": sum(len(w) for w in wavs) / 16000 / 3600,
                   "layer1_change_rate": layer1_change_rate(codes), "minutes": report.get("minutes", 0) + minutes,
                   "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU",
                   "parameters": sum(p.numel() for p in codec.parameters())})
    (out_dir / "training.json").write_text(json.dumps(report, indent=2))
    card = model_card(report, Path(manifest).name)
    (out_dir / "MODEL_CARD.md").write_text(card)
    return card


def model_card(r: dict, manifest: str) -> str:
    d = r.get("decoder")
    decoder = (f"""- Decoder: the SEANet decoder trained for {d['steps']} steps (batch {d['batch']} crops, AdamW
  betas 0.8/0.99, one-cycle 1e-3) with encoder and codebooks frozen, from the quantized sum of all
  8 RVQ layers, on the losses of the SpeechTokenizer and EnCodec papers: multi-resolution STFT
  (spectral convergence + log magnitude, windows 256-2048) + 4 x log-mel L1; no adversarial loss.
  Last logged step: STFT loss {d['last_stft']:.3f}, log-mel L1 {d['last_mel_l1']:.3f}. Curve in decoder_history.json.
  Command: `speechalign train-codec --from models/demo_codec --out DIR --decoder-steps {d['steps']}`"""
               if d else "- Decoder: untrained (decoded audio is not speech).")
    return f"""# speechalign demo codec

SpeechTokenizer architecture (`speechtokenizer` package, official config keys), small size:
{json.dumps(DEMO_CODEC_CONFIG)}
{r['parameters'] / 1e6:.2f} M parameters; 16 kHz, 50 Hz frames, 8 RVQ layers of 1024 codes.

## How it was made (`speechalign train-codec`)
- Data: {r['utterances']} utterances ({r['hours_of_audio']:.2f} h) from `{manifest}`. Without --manifest,
  `speechalign train-codec` speaks its own corpus: 800 sentences of the demo grammar with another
  seed than the demo's, in espeak-ng voices en-us+m3, en-gb+f3, en-us+f3 and en-gb+m1.
- Encoder: distilled for {r['distill_steps']} steps (batch 16 x 2 s, AdamW, one-cycle 2e-3) so that,
  through the config's `transform` head, it predicts each frame's log-mel spectrum normalised per
  utterance: SpeechTokenizer's semantic distillation with log-mel as the teacher instead of HuBERT.
  Distillation MSE at the last step {r['distill_loss']:.3f} (targets have unit variance).
- RVQ: residual k-means on {r['frames']} encoder frames. Layer 1 has {r['codes_used_per_layer'][0]} distinct
  centroids (coarse content classes); layers 2-8 use {r['codes_used_per_layer'][1:]} codes.
- Layer-1 code changes on {100 * r['layer1_change_rate']:.1f}% of frames of the training audio.
{decoder}
- Hardware: {r['hardware']}; {r['minutes']:.1f} minutes in all.

## What it is for
Its layer-1 codes follow what is said, so the demo's codec LM can learn them from a few hundred
sentences; its decoder turns codes back into speech. Campaigns decode the LM's layer-1 output
through an acoustic stage that bootstrap trains (models/speechtokenizer/acoustic.py), or layer 1 alone.
It knows only espeak-ng voices; it is a demo model, not a general speech codec.
"""
