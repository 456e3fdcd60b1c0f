"""Bootstrap's acoustic stage: train the model that turns layer-1 units into all RVQ layers (models/acoustic.py).

It learns from the train split's golden tokens only; its per-layer accuracy on the held-out
split goes into its report (acoustic.json) so a user sees how well it generalises.

The demo ships the stage its recipe trains (models/demo_codec/acoustic/; tasks/shipped.py): a bootstrap of
the same recipe takes it instead of training the same model again (2-3 minutes on a 2-core CPU).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from speechalign.config import Config
from speechalign.models.acoustic import CONFIG_NAME, AcousticConfig, is_saved_acoustic, layer_accuracy, train_acoustic
from speechalign.models.codec import load_codec
from speechalign.preference_store.store import open_store
from speechalign.tasks.progress import Progress
from speechalign.tasks.shipped import SHIPPED, recipe_fingerprint, take_shipped

log = logging.getLogger(__name__)


def train_acoustic_stage(cfg: Config) -> dict:
    out = cfg.layout.acoustic
    if cfg.codec.acoustic != "model":
        return {"acoustic": cfg.codec.acoustic}
    if is_saved_acoustic(out):
        log.info("bootstrap: acoustic stage already in %s", out)
        return training_report(out)
    store = open_store(cfg.store_url)
    train, heldout = store.prompts("train"), store.prompts("heldout")
    codec = load_codec(*cfg.codec.files())
    golden = [np.asarray(p.golden_tokens, dtype=np.int64) for p in train]
    if golden and golden[0].shape[0] < codec.n_q:
        raise RuntimeError(f"the store's golden tokens have {golden[0].shape[0]} RVQ layers, the codec {codec.n_q}: "
                           "bootstrap a new work directory with this codec")
    config = stage_config(cfg, train, codec)
    fingerprint = stage_fingerprint(cfg, config, train)
    if take_shipped("acoustic stage", SHIPPED_STAGE, shipped_fingerprint(), fingerprint, out):
        return {**training_report(out), "shipped": str(SHIPPED_STAGE)}
    steps = cfg.codec.acoustic_steps
    with Progress(f"acoustic stage: {steps} training steps", steps, "step") as progress:
        model, report = train_acoustic(golden, [p.speaker for p in train], config, steps, cfg.model.seed,
                                       log=log.debug, on_step=lambda step, loss: progress.set(step, loss=loss))
    report["fingerprint"] = fingerprint
    if heldout:
        accuracy = layer_accuracy(model, [np.asarray(p.golden_tokens) for p in heldout], [p.speaker for p in heldout])
        report["heldout_layer_accuracy"] = [round(a, 4) for a in accuracy]
    model.save(out, report)
    return {k: v for k, v in report.items() if k != "history"}


def stage_config(cfg: Config, train: list, codec=None) -> AcousticConfig:
    """The stage's shape: the codec's layers and codebook, the train split's speakers, [codec] acoustic_dim/layers."""
    codec = codec or load_codec(*cfg.codec.files())
    return AcousticConfig(n_q=codec.n_q, codebook_size=codec.quantizer.bins, dim=cfg.codec.acoustic_dim,
                          layers=cfg.codec.acoustic_layers, speakers=sorted({p.speaker for p in train if p.speaker}))


SHIPPED_STAGE = SHIPPED / "demo_codec" / "acoustic"


def training_report(path: Path) -> dict:
    return {k: v for k, v in json.loads((path / CONFIG_NAME).read_text())["training"].items() if k != "history"}


def shipped_fingerprint() -> str | None:
    return training_report(SHIPPED_STAGE).get("fingerprint") if is_saved_acoustic(SHIPPED_STAGE) else None


def stage_fingerprint(cfg: Config, config: AcousticConfig, train: list) -> str:
    """What the trained stage is made from (tasks/shipped.py): codec, corpus recipe, its config, steps, seed."""
    return recipe_fingerprint(cfg, {"config": asdict(config), "steps": cfg.codec.acoustic_steps,
                                    "seed": cfg.model.seed}, train)
