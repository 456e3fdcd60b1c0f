"""An ablation: the same campaign under each preference criterion, from the same base model.

Each criterion runs as its own campaign, `<campaign.name>-<criterion>`, in the same work directory:
same corpus, same base model, same seeds, only pairs.criterion differs. Rerunning the ablation
finishes campaigns that did not complete and skips those that did. The table (speechalign/report.py,
`ablation_report`) puts every held-out metric of each criterion's last round beside the base model's.
"""

from __future__ import annotations

import re

from prefect import flow
from speechalign.flows.campaign import alignment_campaign
from speechalign.flows.common import ensure_campaign, load_flow_config
from speechalign.preference_store.store import open_store
from speechalign.tasks.guard import stopped_by_guard


def campaign_name(base: str, criterion: str) -> str:
    return f"{base}-{re.sub(r'[^a-z0-9]+', '-', criterion.lower()).strip('-')}"


def criterion_overrides(base: str, criterion: str, overrides: list[str] | None) -> list[str]:
    return [*(overrides or []), f"campaign.name={campaign_name(base, criterion)}", f"pairs.criterion={criterion}"]


@flow(name="criterion-ablation")
def criterion_ablation(workdir: str, criteria: list[str], rounds: int, config_file: str | None = None,
                       overrides: list[str] | None = None) -> list[str]:
    base = load_flow_config(workdir, config_file, overrides).campaign.name
    runs = [criterion_overrides(base, criterion, overrides) for criterion in criteria]
    configs = [load_flow_config(workdir, config_file, extra) for extra in runs]  # each checked before any round runs
    names = []
    for extra, cfg in zip(runs, configs):
        campaign = ensure_campaign(cfg)
        store = open_store(cfg.store_url)
        done = sum(r.number > 0 and r.status == "completed" for r in store.rounds(campaign.id))
        if done < rounds and not stopped_by_guard(cfg, store, campaign.id):
            alignment_campaign(workdir, rounds - done, config_file, extra)
        names.append(cfg.campaign.name)
    return names
