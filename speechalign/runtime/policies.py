"""The campaign's policies on disk: merged ones pruned, adapters kept, any round's policy merged again on demand.

Each round writes its LoRA adapter (megabytes; half a gigabyte at 7B when the embeddings train too) and its merged
policy (the whole model: 14 GB for 7B in bf16).
The next round needs only the last merged policy, and serving needs the champion's; with
campaign.keep_policies = "last_and_champion" (the default) every other round's merged policy is deleted when
a round completes. Nothing is lost: round r's policy is round r-1's with round r's adapter merged in (that is
how it was made), so `speechalign policy --round N` rebuilds it from the base model and the adapters.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from speechalign.config import Config
from speechalign.models.codec_lm import CodecLM, is_saved_policy, lineage_after, load_codec_lm
from speechalign.models.precision import Precision, decide_precision
from speechalign.preference_store.schema import Campaign
from speechalign.preference_store.store import PreferenceStore

log = logging.getLogger(__name__)


def prune_policies(cfg: Config, store: PreferenceStore, campaign: Campaign) -> list[str]:
    """Delete the merged policies of rounds that are neither the last nor the champion; the paths deleted."""
    if cfg.campaign.keep_policies == "all":
        return []
    rounds = [r for r in store.rounds(campaign.id) if r.number > 0 and r.status == "completed"]
    champion = store.champion(campaign.id)
    keep = {rounds[-1].number} if rounds else set()
    if champion:
        keep.add(champion[0].number)
    deleted = []
    for rnd in rounds:
        path = cfg.layout.policy(rnd.number)
        if rnd.number not in keep and path.is_dir():
            shutil.rmtree(path)
            deleted.append(str(path))
    if deleted:
        log.info("deleted the merged policies of rounds %s (campaign.keep_policies = %s; their adapters stay)",
                 ", ".join(Path(p).parent.name for p in deleted), cfg.campaign.keep_policies)
    return deleted


def merged_lineage(start: str, adapters: list[str], precision: Precision) -> CodecLM:
    """A policy made again: `start` (the base model, or a kept merged policy) in the inference dtype, with each LoRA
    adapter of `adapters` merged in turn, as the rounds that trained them merged them (PEFT)."""
    from peft import PeftModel  # noqa: PLC0415 - the training stack

    lm = load_codec_lm(start, for_training=True, dtype=precision.inference)
    for adapter in adapters:
        lm.model = PeftModel.from_pretrained(lm.model, adapter).merge_and_unload()
    return lm


def rebuild_policy(cfg: Config, store: PreferenceStore, campaign: Campaign, number: int, out: Path) -> Path:
    """Round `number`'s merged policy, written to `out`: the nearest kept policy at or before it, then each later
    round's adapter merged in turn."""
    rounds = {r.number: r for r in store.rounds(campaign.id)}
    if number not in rounds or rounds[number].status != "completed" or number < 1:
        raise ValueError(f"campaign {campaign.name} has no completed round {number}; its rounds: "
                         f"{', '.join(str(n) for n, r in rounds.items() if r.status == 'completed' and n > 0)}")
    start = next((n for n in range(number, 0, -1) if is_saved_policy(cfg.layout.policy(n))), 0)
    policy = str(cfg.layout.policy(start)) if start else campaign.base_model_path
    if start == number:  # the round's own policy is still there
        shutil.copytree(policy, out, dirs_exist_ok=True)
        return out
    adapters = [str(cfg.layout.adapter(n)) for n in range(start + 1, number + 1)]
    lm = merged_lineage(policy, adapters, decide_precision(cfg.model.dtype))
    parent, lineage = policy, lm.metadata
    for adapter in adapters:  # the lineage each round recorded: the base model and the adapters merged since
        lineage = {"parent": parent, "lineage": lineage_after(parent, lineage, adapter)}
        parent = adapter
    lm.metadata.update(parent=str(cfg.layout.policy(number - 1)), round=number, lineage=lineage["lineage"])
    lm.save(out, cfg.model.max_shard_size)
    return out
