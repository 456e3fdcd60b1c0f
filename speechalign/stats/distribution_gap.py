"""The distribution gap between golden units and the policy's own, SpeechAlign's Figure 2 as numbers.

SpeechAlign shows that a codec LM's synthetic tokens sit apart from the golden tokens of real speech,
and that alignment closes the gap. Per round, on the held-out prompts:
- unit_kl: KL(golden || policy) of the unit unigram distributions;
- bigram_kl: the same over pairs of consecutive units;
both over the units either side uses, add-half smoothed (so an unseen unit costs, but not infinitely).
Both are figures of the whole held-out set, not means over prompts, so `gap_changes` gives their change
between two rounds a paired bootstrap interval of its own: it resamples the prompts (the golden side and
both rounds together) and computes both rounds' KL again from the picked prompts' counts.
`projection_figure` draws both sets of sequences in 2-D: each sequence is its unit histogram, projected
on the two principal axes of golden and synthetic together.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import numpy as np
from scipy import sparse

from speechalign.stats.intervals import RESAMPLES, SEED


def _kl(p: Counter, q: Counter) -> float:
    support = sorted(p.keys() | q.keys())
    a = np.array([p[u] for u in support], dtype=np.float64) + 0.5
    b = np.array([q[u] for u in support], dtype=np.float64) + 0.5
    a, b = a / a.sum(), b / b.sum()
    return float(np.sum(a * np.log(a / b)))


def unit_kl(golden: list[list[int]], sampled: list[list[int]]) -> float:
    return _kl(Counter(u for s in golden for u in s), Counter(u for s in sampled for u in s))


def bigram_kl(golden: list[list[int]], sampled: list[list[int]]) -> float:
    return _kl(Counter(b for s in golden for b in pairwise(s)), Counter(b for s in sampled for b in pairwise(s)))


def gap(golden: list[list[int]], sampled: list[list[int]]) -> dict[str, float]:
    return {"unit_kl": unit_kl(golden, sampled), "bigram_kl": bigram_kl(golden, sampled)}


GAPS = {"unit_kl": lambda seq: seq, "bigram_kl": pairwise}  # figure -> the items of a sequence it counts


def gap_changes(golden: dict[int, list[int]], now: dict[int, list[list[int]]], before: dict[int, list[list[int]]],
                resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, list[float]]:
    """Per gap figure, [change, 2.5th, 97.5th percentile] of now's figure minus before's, over the prompts all
    three have (`golden`: prompt -> its golden units; `now`, `before`: prompt -> its samples' units). Each
    resample picks prompts with replacement, the same picks for the golden side and both rounds, as
    speechalign/stats/intervals.py does for the per-prompt metrics. A KL is not linear in the counts (a resample holds
    fewer distinct prompts), so the change itself can lie a little outside its percentile interval."""
    prompts = sorted(golden.keys() & now.keys() & before.keys())
    if not prompts:
        return {}
    picks = np.random.default_rng(seed).integers(0, len(prompts), size=(resamples, len(prompts)))
    weights = np.stack([np.bincount(row, minlength=len(prompts)) for row in picks]).astype(np.float64)
    out = {}
    for name, items in GAPS.items():
        counts = [[Counter(items(golden[p])) for p in prompts],
                  [Counter(x for seq in now[p] for x in items(seq)) for p in prompts],
                  [Counter(x for seq in before[p] for x in items(seq)) for p in prompts]]
        index = {x: i for i, x in enumerate(sorted(set().union(*counts[0], *counts[1], *counts[2])))}
        g, n, b = (_count_matrix(c, index) for c in counts)
        chunk = max(1, 1_000_000 // max(1, len(index)))  # resamples per step: bounds the dense (chunk, items) sums
        change, *resampled = [_kl_change(w, g, n, b) for w in
                              [np.ones((1, len(prompts))), *np.split(weights, range(chunk, resamples, chunk))]]
        low, high = np.percentile(np.concatenate(resampled), [2.5, 97.5])
        out[name] = [float(change[0]), float(low), float(high)]
    return out


def _count_matrix(counters: list[Counter], index: dict) -> sparse.csr_matrix:
    """(prompts, items): each prompt's count of each item."""
    rows = [i for i, c in enumerate(counters) for _ in c]
    cols = [index[x] for c in counters for x in c]
    values = [v for c in counters for v in c.values()]
    return sparse.csr_matrix((values, (rows, cols)), shape=(len(counters), len(index)), dtype=np.float64)


def _kl_change(weights: np.ndarray, golden: sparse.csr_matrix, now: sparse.csr_matrix,
               before: sparse.csr_matrix) -> np.ndarray:
    """For each weighting of the prompts (a row of `weights`), `_kl` of the weighted counts: now's minus before's."""
    p = _weighted(weights, golden)  # the golden side, summed once for both rounds
    return _kl_rows(p, _weighted(weights, now)) - _kl_rows(p, _weighted(weights, before))


def _weighted(weights: np.ndarray, counts: sparse.csr_matrix) -> np.ndarray:
    """(weightings, items): the prompts' counts summed with each row of `weights`."""
    return np.asarray((counts.T @ weights.T).T, dtype=np.float64)


def _kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """`_kl` of each row pair, over the items that either row has (add-half smoothed there)."""
    half = 0.5 * ((p + q) > 0)  # smoothing on the items this weighting uses; others stay 0 on both sides
    p, q = p + half, q + half
    za, zb = p.sum(1), q.sum(1)
    np.divide(p, q, out=q, where=half > 0)  # q is now the ratio (1 where unused: log 0)
    np.log(q, out=q, where=half > 0)
    q[half == 0] = 0
    return np.einsum("ij,ij->i", p, q) / za - np.log(za) + np.log(zb)


def save_projection(golden: list[list[int]], sampled: list[list[int]], title: str, path) -> None:
    """A PNG of golden and sampled sequences as points (unit histograms on two principal axes)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    units = sorted({u for s in golden + sampled for u in s})
    index = {u: i for i, u in enumerate(units)}
    rows = np.zeros((len(golden) + len(sampled), max(1, len(units))))
    for r, seq in enumerate(golden + sampled):
        for u in seq:
            rows[r, index[u]] += 1
        rows[r] /= max(1, len(seq))
    centred = rows - rows.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    points = centred @ axes[:2].T if axes.shape[0] >= 2 else np.zeros((len(rows), 2))
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(*points[:len(golden)].T, s=10, label="golden units", alpha=0.7)
    ax.scatter(*points[len(golden):].T, s=10, label="policy's samples", alpha=0.7)
    ax.set_title(title)
    ax.set_xlabel("principal axis 1 of unit histograms")
    ax.set_ylabel("principal axis 2")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
