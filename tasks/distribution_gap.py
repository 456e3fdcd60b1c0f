"""The distribution gap between golden units and the policy's own, SpeechAlign's Figure 2 as numbers.

SpeechAlign shows that a codec LM's synthetic tokens sit apart from the golden tokens of real speech,
and that alignment closes the gap. Per round, on the held-out prompts:
- unit_kl: KL(golden || policy) of the unit unigram distributions;
- bigram_kl: the same over pairs of consecutive units;
both over the units either side uses, add-half smoothed (so an unseen unit costs, but not infinitely).
`projection_figure` draws both sets of sequences in 2-D: each sequence is its unit histogram, projected
on the two principal axes of golden and synthetic together.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import numpy as np


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
