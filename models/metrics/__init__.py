"""Metrics are plug-ins with one interface: a name, which way is better, and a batched `score`.

A metric scores a batch of `ScoreItem`s (a sample with its prompt's golden reference) and returns
one value per item. Models a metric needs are loaded once per worker (`get_metric` caches).
Register a new metric by adding it to `METRICS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol


@dataclass
class ScoreItem:
    tokens: list[int]  # the sample's layer-1 units
    golden_tokens: list[int]  # the recording's layer-1 units
    text: str
    audio_path: str | None = None
    golden_audio_path: str | None = None


class Metric(Protocol):
    name: str
    higher_is_better: bool | None  # None: reported only, never used to rank samples

    def score(self, items: list[ScoreItem]) -> list[float]: ...


def _registry() -> dict[str, type]:
    from speechalign.models.metrics.tokens import LengthRatio, UnitEditDistance

    return {m.name: m for m in (UnitEditDistance, LengthRatio)}


def metric_names() -> list[str]:
    return sorted(_registry())


@lru_cache(maxsize=None)
def get_metric(name: str) -> Metric:
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown metric {name!r}; [score] metrics can be {', '.join(sorted(registry))}")
    return registry[name]()
