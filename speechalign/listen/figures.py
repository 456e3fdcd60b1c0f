"""The listening test's figures: win rates with Wilson intervals, agreement between raters, and agreement
of raters with the automatic criterion.

- Win rate of a comparison = the subject side's wins / (wins + losses): ties are excluded from the rate
  (and counted separately); the 95% interval is Wilson's score interval on those wins + losses.
- Rater agreement, over items judged by two raters or more (outcomes subject | reference | tie): the
  mean pairwise percent agreement and Fleiss' kappa (its form for a varying number of raters per item).
- Criterion agreement: of the non-tie human judgments on items that are automatic pairs, the share that
  picked the sample the criterion chose (with its Wilson interval).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict

from speechalign.listen.items import COMPARISONS
from speechalign.preference_store.judgments import JudgedItem

Z95 = 1.959963984540054
OUTCOMES = ("subject", "reference", "tie")
LABELS = {
    "round_vs_previous": "round {r} vs round {p}",
    "aligned_vs_base": "aligned (round {r}) vs base",
    "golden_vs_synthetic": "golden vs synthetic, round {r}",
    "criterion": "criterion's chosen vs rejected, round {r}",
}


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson's score interval for a binomial proportion (None without trials)."""
    if n == 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(successes: int, n: int) -> dict:
    interval = wilson(successes, n)
    return {"rate": successes / n if n else None, "ci_low": interval[0] if interval else None,
            "ci_high": interval[1] if interval else None}


def comparisons(judged: list[JudgedItem]) -> list[dict]:
    counts: dict[tuple[str, int], Counter] = defaultdict(Counter)
    for j in judged:
        counts[(j.comparison, j.round_number)][j.outcome] += 1
    rows = []
    for (comparison, number), c in sorted(counts.items(), key=lambda kv: (COMPARISONS.index(kv[0][0]), kv[0][1])):
        wins, losses, ties = c["subject"], c["reference"], c["tie"]
        rows.append({"comparison": comparison, "round": number,
                     "label": LABELS[comparison].format(r=number, p=number - 1),
                     "wins": wins, "losses": losses, "ties": ties, "judgments": wins + losses + ties,
                     **rate(wins, wins + losses)})
    return rows


def rater_agreement(judged: list[JudgedItem]) -> dict:
    by_item: dict[int, Counter] = defaultdict(Counter)
    for j in judged:
        by_item[j.item_id][j.outcome] += 1
    shared = [c for c in by_item.values() if sum(c.values()) >= 2]
    if not shared:
        return {"items": 0, "percent_agreement": None, "fleiss_kappa": None}
    per_item = [(sum(v * v for v in c.values()) - n) / (n * (n - 1)) for c in shared for n in [sum(c.values())]]
    observed = statistics.fmean(per_item)
    total = sum(sum(c.values()) for c in shared)
    expected = sum((sum(c[o] for c in shared) / total) ** 2 for o in OUTCOMES)
    return {"items": len(shared), "percent_agreement": observed,
            "fleiss_kappa": (observed - expected) / (1 - expected) if expected < 1 else None}


def criterion_agreement(judged: list[JudgedItem]) -> dict:
    on_pairs = [j for j in judged if j.auto_pair]
    decided = [j for j in on_pairs if j.outcome != "tie"]
    agree = sum(j.outcome == "subject" for j in decided)
    return {"judgments": len(decided), "agree": agree, "ties": len(on_pairs) - len(decided),
            **rate(agree, len(decided))}


def listening_figures(judged: list[JudgedItem]) -> dict:
    return {"judgments": len(judged), "raters": dict(Counter(j.rater for j in judged)),
            "comparisons": comparisons(judged), "rater_agreement": rater_agreement(judged),
            "criterion_agreement": criterion_agreement(judged)}
