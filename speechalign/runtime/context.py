"""What every stage of a round is given: the round's context, built once when the round opens.

It holds the campaign's config, the store, the round's row, the work directory's layout, and the rounds
this one is compared with: the base model's (round 0), the previous round's (the guard's reference), and
the current champion's (the promotion gate's: round 0 until a round is promoted).
"""

from __future__ import annotations

from dataclasses import dataclass

from speechalign.config import Config
from speechalign.layout import Layout
from speechalign.preference_store.schema import Campaign, Round
from speechalign.preference_store.store import PreferenceStore, open_store
from speechalign.runtime.results import RESULT_TYPES, RoundRecord, load


@dataclass(frozen=True)
class RoundContext:
    cfg: Config
    store: PreferenceStore
    campaign: Campaign
    round: Round
    layout: Layout
    base: RoundRecord | None = None  # round 0: the base model (None for round 0 itself)
    previous: RoundRecord | None = None  # round r - 1 (None for round 0)
    champion: RoundRecord | None = None  # the champion's round, or round 0 until one is promoted

    @property
    def number(self) -> int:
        return self.round.number


def round_record(store: PreferenceStore, rnd: Round) -> RoundRecord:
    """A round's completed stages, each result loaded into its dataclass."""
    results = {name: load(RESULT_TYPES[name], st.result or {}) for name, st in store.stages(rnd.id).items()
               if st.status == "completed" and name in RESULT_TYPES}
    return RoundRecord(rnd.number, results)


def open_round(cfg: Config, campaign: Campaign, number: int, policy_in: str) -> RoundContext:
    """Round `number` of the campaign, created on first call; a rerun finds the same row and resumes it."""
    store = open_store(cfg.store_url)
    rnd = store.open_round(campaign.id, number, policy_in)
    if number == 0:
        return RoundContext(cfg, store, campaign, rnd, cfg.layout)
    base = store.round_number(campaign.id, 0)
    previous = store.round_number(campaign.id, number - 1)
    promoted = store.champion(campaign.id)
    champion = promoted[0] if promoted else base
    records = {r.id: round_record(store, r) for r in (base, previous, champion) if r is not None}
    return RoundContext(cfg, store, campaign, rnd, cfg.layout, *(records.get(r.id) if r else None
                                                                for r in (base, previous, champion)))
