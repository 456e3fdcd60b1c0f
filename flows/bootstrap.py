"""Bootstrap: everything a campaign starts from.

    demo corpus (unless a manifest is given) -> codec -> golden tokens -> held-out / sft / train split
    -> acoustic stage (SpeechTokenizer only: layer-1 units -> the latent the codec's decoder reads, for decoding to
       audio; a transformers codec decodes its units directly)
    -> base model (SFT on the golden tokens of the 'sft' split, utterances alignment rounds never use)
    -> ceiling (the held-out recordings, and their golden tokens decoded, scored: bootstrap/ceiling.py)

Each step is skipped when its output already exists, so bootstrap can be run again safely
(for example with a second manifest: only its new utterances are imported).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from speechalign.bootstrap.acoustic_stage import train_acoustic_stage
from speechalign.bootstrap.base_model import initial_model, supervised_finetune
from speechalign.bootstrap.ceiling import measure_ceiling
from speechalign.bootstrap.demo_corpus import build_demo_corpus
from speechalign.bootstrap.import_corpus import import_corpus
from speechalign.bootstrap.shipped import SHIPPED, recipe_fingerprint, take_shipped
from speechalign.config import Config, save_config
from speechalign.flows.common import load_flow_config
from speechalign.models.codec_lm import METADATA_FILE, is_saved_policy
from speechalign.models.codecs import codec_flattening, golden_units, open_codec
from speechalign.models.precision import decide_precision
from speechalign.plan import check_token_budget
from speechalign.preference_store.store import open_store

log = logging.getLogger(__name__)


@task(cache_policy=NO_CACHE)
def demo_corpus(cfg: Config) -> str:
    d = cfg.demo
    return str(build_demo_corpus(cfg.layout.corpus, d.utterances, d.voices, d.seed, d.speed))


@task(cache_policy=NO_CACHE)
def import_manifest(cfg: Config, manifest: str) -> dict:
    codec = open_codec(cfg, acoustic=False)
    c = cfg.corpus
    return import_corpus(open_store(cfg.store_url), codec, Path(manifest), c.min_seconds, c.max_seconds,
                         c.heldout_fraction, c.split_seed, cfg.layout.repaired_audio, cfg.codec.encode_batch_size,
                         c.sft_fraction if cfg.model.sft_epochs > 0 else 0.0)


@task(cache_policy=NO_CACHE)
def acoustic_stage(cfg: Config) -> dict:
    return train_acoustic_stage(cfg)


@task(cache_policy=NO_CACHE)
def base_model(cfg: Config) -> dict:
    out = cfg.layout.base_model
    if is_saved_policy(out):
        log.info("bootstrap: base model already in %s", out)
        return json.loads((out / METADATA_FILE).read_text())
    store = open_store(cfg.store_url)
    train = sft_prompts(store)
    fingerprint = base_model_fingerprint(cfg, train)
    shipped = json.loads((SHIPPED_BASE / METADATA_FILE).read_text()).get("fingerprint") \
        if is_saved_policy(SHIPPED_BASE) else None
    if not cfg.model.base_model and take_shipped("base model", SHIPPED_BASE, shipped, fingerprint, out):
        return json.loads((out / METADATA_FILE).read_text())
    flattening = codec_flattening(cfg.codec)  # how many units the LM speaks, from the codec's config
    speakers = sorted({p.speaker for p in store.prompts() if p.speaker})
    lm = initial_model(cfg, flattening, speakers, [golden_units(p.golden_tokens, flattening) for p in train])
    lm.metadata["fingerprint"] = fingerprint
    if cfg.model.sft_epochs > 0:
        lm.metadata["sft"] = supervised_finetune(cfg, lm, train, str(cfg.layout.sft_run))
    lm.model = lm.model.to(decide_precision(cfg.model.dtype).inference)  # saved as it is served, never fp32 masters
    lm.save(out, cfg.model.max_shard_size)
    return lm.metadata


@task(cache_policy=NO_CACHE)
def ceiling(cfg: Config) -> dict:
    return measure_ceiling(cfg, open_store(cfg.store_url))


SHIPPED_BASE = SHIPPED / "demo_lm"


def sft_prompts(store) -> list:
    """What the base model's SFT learns from: the 'sft' split (corpus.sft_fraction), or the whole train split of
    a store imported without one."""
    return store.prompts("sft") or store.prompts("train")


def base_model_fingerprint(cfg: Config, train: list) -> str:
    """What the demo model's SFT is made from (bootstrap/shipped.py): its [model] settings, codec, corpus recipe."""
    settings = {k: v for k, v in cfg.model.model_dump().items()
                if k not in ("base_model", "max_shard_size", "sft_method")}
    if cfg.model.sft_method != "full":  # full SFT is the recipe the shipped model was made with before this knob
        settings["sft_method"] = cfg.model.sft_method
    return recipe_fingerprint(cfg, {"model": settings}, train)


@flow(name="bootstrap")
def bootstrap(workdir: str, config_file: str | None = None, overrides: list[str] | None = None) -> dict:
    cfg = load_flow_config(workdir, config_file, overrides)
    save_config(cfg)
    manifest = cfg.corpus.manifest or demo_corpus(cfg)
    imported = import_manifest(cfg, manifest)
    store = open_store(cfg.store_url)
    if not store.prompts("train") or not store.prompts("heldout"):
        raise RuntimeError(f"{manifest}: too few usable utterances for a train and a held-out split "
                           f"(train {len(store.prompts('train'))}, held-out {len(store.prompts('heldout'))})")
    check_token_budget(cfg, store)  # a long utterance would be cut: say which and which knob, before any training
    acoustic = acoustic_stage(cfg)
    metadata = base_model(cfg)
    reachable = ceiling(cfg)
    return {"manifest": manifest, "import": imported, "acoustic": acoustic, "base_model": str(cfg.layout.base_model),
            "metadata": metadata, "ceiling": reachable}
