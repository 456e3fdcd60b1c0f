"""Bootstrap's acoustic stage: train the model that turns layer-1 units into all RVQ layers (models/acoustic.py).

It learns from the train split's golden tokens only; its per-layer accuracy on the held-out
split goes into its report (acoustic.json) so a user sees how well it generalises.
"""

from __future__ import annotations

import json

import numpy as np

from speechalign.config import Config
from speechalign.models.acoustic import CONFIG_NAME, AcousticConfig, is_saved_acoustic, layer_accuracy, train_acoustic
from speechalign.models.codec import load_codec
from speechalign.tasks.decode import acoustic_dir
from speechalign.tasks.stage import log, open_store


def train_acoustic_stage(cfg: Config) -> dict:
    out = acoustic_dir(cfg)
    if cfg.codec.acoustic != "model":
        return {"acoustic": cfg.codec.acoustic}
    if is_saved_acoustic(out):
        log.info("bootstrap: acoustic stage already in %s", out)
        return {k: v for k, v in json.loads((out / CONFIG_NAME).read_text())["training"].items() if k != "history"}
    store = open_store(cfg)
    train, heldout = store.prompts("train"), store.prompts("heldout")
    codec = load_codec(*cfg.codec_files())
    golden = [np.asarray(p.golden_tokens, dtype=np.int64) for p in train]
    if golden and golden[0].shape[0] < codec.n_q:
        raise RuntimeError(f"the store's golden tokens have {golden[0].shape[0]} RVQ layers, the codec {codec.n_q}: "
                           "bootstrap a new work directory with this codec")
    config = AcousticConfig(n_q=codec.n_q, codebook_size=codec.quantizer.bins,
                            speakers=sorted({p.speaker for p in train if p.speaker}))
    model, report = train_acoustic(golden, [p.speaker for p in train], config, cfg.codec.acoustic_steps,
                                   cfg.model.seed, log=log.info)
    if heldout:
        accuracy = layer_accuracy(model, [np.asarray(p.golden_tokens) for p in heldout], [p.speaker for p in heldout])
        report["heldout_layer_accuracy"] = [round(a, 4) for a in accuracy]
    model.save(out, report)
    return {k: v for k, v in report.items() if k != "history"}
