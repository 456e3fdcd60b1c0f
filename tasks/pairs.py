"""Pairs: preference pairs from a round's scored samples, by the campaign's criterion.

- golden_vs_synthetic (SpeechAlign): chosen = the golden units of the recording, rejected = each of
  the model's candidates for that prompt (a candidate identical to the golden is no preference).
Criteria are functions registered in CRITERIA; each returns rows for the `pairs` table.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from speechalign.config import Config
from speechalign.preference_store.schema import Sample
from speechalign.tasks.stage import open_store


def golden_vs_synthetic(samples: list[Sample], scores: dict[int, dict[str, float | None]], cfg: Config) -> list[tuple[Sample, Sample, dict]]:
    by_prompt: dict[int, dict[str, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        by_prompt[s.prompt_id][s.kind].append(s)
    pairs = []
    for kinds in by_prompt.values():
        for golden in kinds["golden"]:
            rejected = [c for c in kinds["candidate"] if c.tokens != golden.tokens]
            if cfg.pairs.max_pairs_per_prompt:
                # keep the candidates furthest from the golden: the clearest preferences
                rejected.sort(key=lambda c: -(scores.get(c.id, {}).get("unit_edit_distance") or 0.0))
                rejected = rejected[: cfg.pairs.max_pairs_per_prompt]
            for cand in rejected:
                pairs.append((golden, cand, margins(scores.get(golden.id, {}), scores.get(cand.id, {}))))
    return pairs


def margins(chosen: dict[str, float | None], rejected: dict[str, float | None]) -> dict[str, float]:
    """chosen - rejected for every metric both have a value for."""
    return {m: chosen[m] - rejected[m] for m in chosen
            if chosen.get(m) is not None and rejected.get(m) is not None}


CRITERIA: dict[str, Callable] = {"golden_vs_synthetic": golden_vs_synthetic}


def build_pairs(cfg: Config, round_id: int) -> dict:
    criterion = cfg.pairs.criterion
    if criterion not in CRITERIA:
        raise ValueError(f"unknown pair criterion {criterion!r}; [pairs] criterion can be {', '.join(CRITERIA)}")
    store = open_store(cfg)
    samples = [s for s in store.samples(round_id) if s.kind in ("golden", "candidate")]
    scores = store.scores(round_id)
    pairs = CRITERIA[criterion](samples, scores, cfg)
    store.add_pairs([{"round_id": round_id, "prompt_id": chosen.prompt_id, "chosen_sample_id": chosen.id,
                      "rejected_sample_id": rejected.id, "criterion": criterion, "margins": m, "source": "auto"}
                     for chosen, rejected, m in pairs])
    candidates = sum(s.kind == "candidate" for s in samples)
    stored = store.count_pairs(round_id, criterion)
    if stored == 0:
        raise RuntimeError(f"round {round_id}: criterion {criterion} kept no pairs from {candidates} candidates; "
                           "raise generate.k or generate.temperature so candidates differ")
    return {"criterion": criterion, "pairs": stored, "candidates": candidates}
