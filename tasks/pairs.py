"""Pairs: preference pairs from a round's scored samples, by the campaign's criterion (speechalign/criteria.py).

The stage reports the pair yield (pairs kept / candidate pairs considered) and how different the
candidates of a prompt are (mean normalised unit edit distance between them): when samples of one
checkpoint are too alike, few pairs survive, and generate.temperature / top_k / top_p / k are the knobs.

With pairs.human = "mix", the round also trains on human preferences from the listening test
(`speechalign listen`): one pair (criterion "human", source "human") per judged item, chosen = the side
most raters preferred among their non-tie answers (an even split gives none). Only items on golden and
candidate samples of train prompts qualify (golden_vs_synthetic and criterion items, from any earlier
round of the campaign); held-out samples never train. They join the round's automatic pairs in the DPO data.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from speechalign.criteria import candidate_diversity, criterion_function
from speechalign.preference_store.judgments import judged_items
from speechalign.preference_store.store import PreferenceStore
from speechalign.runtime.context import RoundContext
from speechalign.runtime.results import Pairs, Scores
from speechalign.runtime.stage import stage


def human_pairs(store: PreferenceStore, campaign_id: int, round_id: int) -> list[dict]:
    """Pair rows for round `round_id` from the campaign's human judgments (see the module's docstring)."""
    votes: dict[int, Counter] = defaultdict(Counter)
    items = {}
    for j in judged_items(store, campaign_id):
        if j.trainable and j.outcome != "tie":
            votes[j.item_id][j.outcome] += 1
            items[j.item_id] = j
    rows = []
    for item_id, count in votes.items():
        if count["subject"] == count["reference"]:
            continue
        j = items[item_id]
        sides = (j.subject_sample_id, j.reference_sample_id)
        chosen, rejected = sides if count["subject"] > count["reference"] else sides[::-1]
        rows.append({"round_id": round_id, "prompt_id": j.prompt_id, "chosen_sample_id": chosen,
                     "rejected_sample_id": rejected, "criterion": "human", "source": "human",
                     "margins": {"human_votes": abs(count["subject"] - count["reference"])}})
    return rows


@stage
def build_pairs(ctx: RoundContext, scores: Scores) -> Pairs:
    cfg, store, round_id = ctx.cfg, ctx.store, ctx.round.id
    criterion = cfg.pairs.criterion
    wanted = set(scores.sample_ids)
    samples = [s for s in store.samples(round_id) if s.id in wanted and s.kind in ("golden", "candidate")]
    selection = criterion_function(cfg)(samples, store.scores(round_id), cfg)
    store.add_pairs([{"round_id": round_id, "prompt_id": chosen.prompt_id, "chosen_sample_id": chosen.id,
                      "rejected_sample_id": rejected.id, "criterion": criterion, "margins": m, "source": "auto"}
                     for chosen, rejected, m in selection.pairs])
    if cfg.pairs.human == "mix":
        store.add_pairs(human_pairs(store, ctx.campaign.id, round_id))
    stored = store.count_pairs(round_id, criterion)
    result = Pairs(criterion=criterion, pairs=stored, human_pairs=store.count_pairs(round_id, "human"),
                   candidates=sum(s.kind == "candidate" for s in samples), candidate_pairs=selection.considered,
                   pair_yield=stored / max(1, selection.considered), skipped_unscored=selection.skipped_unscored,
                   candidate_diversity=candidate_diversity(samples))
    if stored == 0:
        raise RuntimeError(f"round {ctx.number}: criterion {criterion} kept no pairs of {selection.considered} "
                           f"candidate pairs (candidate diversity {result.candidate_diversity}); raise generate.k, "
                           "generate.temperature or generate.top_p so candidates differ, or lower pairs.margins")
    return result
