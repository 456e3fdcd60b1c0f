"""Bootstrap's acoustic stage: train the model that turns layer-1 units into the decoder's input
(models/speechtokenizer/acoustic.py).

It learns from the golden tokens of every utterance that is not held out; how far its latent lands from the true
one on the held-out split, beside layer 1's own latent, goes into its report (acoustic.json) so a user sees how
well it generalises.

The demo ships the stage its recipe trains (models/demo_codec/acoustic/; bootstrap/shipped.py): a bootstrap of
the same recipe takes it instead of training the same model again (about 4.5 minutes on a 2-core CPU).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from speechalign.bootstrap.shipped import SHIPPED, recipe_fingerprint, take_shipped
from speechalign.config import Config
from speechalign.models.codecs import uses_acoustic_stage
from speechalign.models.speechtokenizer.acoustic import (
    CONFIG_NAME,
    AcousticConfig,
    is_saved_acoustic,
    latent_error,
    train_acoustic,
)
from speechalign.models.speechtokenizer.codec import load_codec
from speechalign.models.speechtokenizer.synthesizer import Synthesizer
from speechalign.preference_store.store import open_store
from speechalign.runtime.progress import Progress

log = logging.getLogger(__name__)


def train_acoustic_stage(cfg: Config) -> dict:
    out = cfg.layout.acoustic
    if cfg.codec.kind != "speechtokenizer":
        return {"acoustic": None, "codec": cfg.codec.kind, "note": "a transformers codec decodes its units directly"}
    if not uses_acoustic_stage(cfg.codec):
        return {"acoustic": cfg.codec.acoustic}
    if is_saved_acoustic(out):
        log.info("bootstrap: acoustic stage already in %s", out)
        return training_report(out)
    store = open_store(cfg.store_url)
    train, heldout = training_prompts(store), store.prompts("heldout")
    codec = load_codec(*cfg.codec.files())
    if train and len(train[0].golden_tokens) < codec.n_q:
        raise RuntimeError(f"the store's golden tokens have {len(train[0].golden_tokens)} RVQ layers, the codec "
                           f"{codec.n_q}: bootstrap a new work directory with this codec")
    config = stage_config(cfg, train, codec)
    fingerprint = stage_fingerprint(cfg, config, train)
    if take_shipped("acoustic stage", SHIPPED_STAGE, shipped_fingerprint(), fingerprint, out):
        return {**training_report(out), "shipped": str(SHIPPED_STAGE)}
    latents_of = Synthesizer(codec, None).code_latents  # (dimension, frames) of the given RVQ layers
    steps = cfg.codec.acoustic_steps
    with Progress(f"acoustic stage: {steps} training steps", steps, "step") as progress:
        model, report = train_acoustic([np.asarray(p.golden_tokens[0]) for p in train],
                                       latents_of([np.asarray(p.golden_tokens) for p in train]),
                                       [p.speaker for p in train], config, steps, cfg.model.seed,
                                       log=log.debug, on_step=lambda step, loss: progress.set(step, loss=loss))
    report["fingerprint"] = fingerprint
    if heldout:  # how far from the true latent it lands on held-out audio, beside layer 1's own latent
        true = latents_of([np.asarray(p.golden_tokens) for p in heldout])
        report["heldout_latent_error"] = round(latent_error(
            model.predict([p.golden_tokens[0] for p in heldout], [p.speaker for p in heldout]), true), 4)
        report["heldout_layer1_latent_error"] = round(latent_error(
            latents_of([np.asarray(p.golden_tokens[:1]) for p in heldout]), true), 4)
    model.save(out, report)
    return {k: v for k, v in report.items() if k != "history"}


def stage_config(cfg: Config, train: list, codec=None) -> AcousticConfig:
    """The stage's shape: the codec's codebook and dimension, the training speakers, [codec] acoustic_dim/layers."""
    codec = codec or load_codec(*cfg.codec.files())
    return AcousticConfig(codebook_size=codec.quantizer.bins, latent_dim=codec.quantizer.dimension,
                          dim=cfg.codec.acoustic_dim, layers=cfg.codec.acoustic_layers,
                          speakers=sorted({p.speaker for p in train if p.speaker}))


SHIPPED_STAGE = SHIPPED / "demo_codec" / "acoustic"


def training_prompts(store) -> list:
    """The base model's 'sft' split and the alignment prompts: never a held-out or test utterance."""
    return [p for p in store.prompts() if p.split in ("sft", "train")]


def training_report(path: Path) -> dict:
    return {k: v for k, v in json.loads((path / CONFIG_NAME).read_text())["training"].items() if k != "history"}


def shipped_fingerprint() -> str | None:
    return training_report(SHIPPED_STAGE).get("fingerprint") if is_saved_acoustic(SHIPPED_STAGE) else None


def stage_fingerprint(cfg: Config, config: AcousticConfig, train: list) -> str:
    """What the trained stage is made from (bootstrap/shipped.py): codec, corpus recipe, its config, steps, seed."""
    return recipe_fingerprint(cfg, {"config": asdict(config), "steps": cfg.codec.acoustic_steps,
                                    "seed": cfg.model.seed}, train)
