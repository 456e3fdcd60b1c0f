"""What the demo ships trained, taken only where it was trained on exactly the recipe at hand.

Bootstrap trains two models: the acoustic stage (bootstrap/acoustic_stage.py) and the base model's SFT
(flows/bootstrap.py). For the demo's own recipe both ship in the package (models/demo_codec/acoustic/,
models/demo_lm/), each with the sha256 of its recipe: everything its training is made from (the codec's
weights, the corpus's recipe, the train split's utterances and speakers, the model's settings, a version).
A bootstrap whose recipe has that fingerprint copies the shipped model instead of training the same model
again; any other corpus, codec or setting trains its own.

The corpus enters by its recipe, not by its golden tokens: the demo corpus's settings (sentences, voices,
speed, seed) and the split, or a user's manifest by content. Golden tokens are the codec's float arithmetic
on espeak's audio, and a few of them differ between CPUs: a fingerprint over them would miss the shipped
models on every machine but the one that made them. To remake them, bootstrap a work directory W with
`SPEECHALIGN_NO_SHIPPED=1`, then `scripts/ship_demo_models.py --workdir W` copies W's models into the package.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path

from speechalign.config import Config

log = logging.getLogger(__name__)
SHIPPED = Path(str(files("speechalign.models")))
VERSION = 3  # raise when a training recipe changes what it makes from the same inputs
NO_SHIPPED = "SPEECHALIGN_NO_SHIPPED"  # set: always train (to remake the shipped models)


def corpus_recipe(cfg: Config) -> dict:
    """What the corpus's golden tokens are made from."""
    recipe: dict = {"corpus": cfg.corpus.model_dump(exclude={"manifest"})}
    if cfg.corpus.manifest:
        recipe["manifest_sha256"] = hashlib.sha256(Path(cfg.corpus.manifest).read_bytes()).hexdigest()
    else:
        recipe["demo"] = cfg.demo.model_dump()
    return recipe


def recipe_fingerprint(cfg: Config, settings: dict, train: Iterable) -> str:
    """sha256 of the codec's weights, the corpus recipe, `settings` and the train split's (id, speaker)."""
    digest = hashlib.sha256()
    for path in cfg.codec.files():
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    digest.update(json.dumps({**settings, "corpus": corpus_recipe(cfg), "version": VERSION}, sort_keys=True,
                             default=str).encode())
    for p in train:
        digest.update(json.dumps([p.utterance_id, p.speaker]).encode())
    return digest.hexdigest()


def take_shipped(what: str, shipped: Path, shipped_fingerprint: str | None, fingerprint: str, out: Path) -> bool:
    """Copy the shipped model to `out` if it was trained on this recipe; whether it was."""
    if shipped_fingerprint != fingerprint or os.environ.get(NO_SHIPPED):
        return False
    log.info("bootstrap: the shipped %s (%s) was trained on this recipe; using it", what, shipped)
    shutil.copytree(shipped, out)
    return True
