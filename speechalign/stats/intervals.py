"""Paired bootstrap intervals of a change between two rounds, over prompts.

Every held-out prompt is evaluated by every round with the same seeds, so two rounds' figures are
paired by prompt: the change of a metric is the mean over prompts of (this round's value - the other
round's value) for that prompt, each value being the mean of the prompt's samples. Its 95% interval
resamples the prompts with replacement (`resamples` times, a fixed seed) and takes the 2.5th and 97.5th
percentiles of the resampled mean changes. Resampling prompts, not samples, is what makes the interval
honest about which sentences the held-out set happens to hold.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
SEED = 0


def paired_change(now: dict[int, float], before: dict[int, float], resamples: int = RESAMPLES,
                  seed: int = SEED) -> tuple[float, float, float] | None:
    """(mean change, 2.5th, 97.5th percentile) of now - before over the prompts both have; None without any."""
    prompts = sorted(now.keys() & before.keys())
    if not prompts:
        return None
    diffs = np.array([now[p] - before[p] for p in prompts], dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(diffs), size=(resamples, len(diffs)))
    means = diffs[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diffs.mean()), float(low), float(high)


def changes(now: dict[str, dict[int, float]], before: dict[str, dict[int, float]]) -> dict[str, list[float]]:
    """Per metric, [mean change, low, high] against `before` (metrics both rounds have per prompt)."""
    out = {}
    for metric in sorted(now.keys() & before.keys()):
        found = paired_change(now[metric], before[metric])
        if found is not None:
            out[metric] = list(found)
    return out


def worse_beyond(change: list[float], higher_is_better: bool, tolerance: float) -> bool:
    """The whole interval lies on the worse side, beyond the tolerance: a regression, not noise."""
    _, low, high = change
    return high < -tolerance if higher_is_better else low > tolerance
