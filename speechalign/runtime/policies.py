"""The campaign's policies on disk: merged ones pruned, adapters kept, any round's policy merged again on demand.

Each round writes its LoRA adapter (megabytes) and its merged policy (the whole model: 14 GB for 7B in bf16).
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
from speechalign.models.codec_lm import is_saved_policy, lineage_after
from speechalign.models.precision import decide_precision
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


def rebuild_policy(cfg: Config, store: PreferenceStore, campaign: Campaign, number: int, out: Path) -> Path:
    """Round `number`'s merged policy, written to `out`: the nearest kept policy at or before it, then each later
    round's adapter merged in turn."""
    from speechalign.tasks.train import merge_adapter  # noqa: PLC0415 - loads the training stack

    rounds = {r.number: r for r in store.rounds(campaign.id)}
    if number not in rounds or rounds[number].status != "completed" or number < 1:
        raise ValueError(f"campaign {campaign.name} has no completed round {number}; its rounds: "
                         f"{', '.join(str(n) for n, r in rounds.items() if r.status == 'completed' and n > 0)}")
    start = next((n for n in range(number, 0, -1) if is_saved_policy(cfg.layout.policy(n))), 0)
    policy = str(cfg.layout.policy(start)) if start else campaign.base_model_path
    lm = None
    for n in range(start + 1, number + 1):
        adapter = str(cfg.layout.adapter(n))
        lm = merge_adapter(policy, adapter, decide_precision(cfg.model.dtype))
        lm.metadata.update(parent=policy, round=n, lineage=lineage_after(policy, lm.metadata, adapter))
        lm.save(out, cfg.model.max_shard_size)
        policy = str(out)
    if lm is None:  # the round's own policy is still there
        shutil.copytree(policy, out, dirs_exist_ok=True)
    return out
