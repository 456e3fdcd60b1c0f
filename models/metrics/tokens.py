"""Token-level metrics: how far a sample's units are from the golden units of the recording."""

from __future__ import annotations

from rapidfuzz.distance import Levenshtein

from speechalign.models.metrics import ScoreItem


class UnitEditDistance:
    """Levenshtein distance between sample and golden units over the golden length (a unit error
    rate: 0 is identical, and it exceeds 1 when the sample is much longer than the golden)."""

    name = "unit_edit_distance"
    higher_is_better = False

    def score(self, items: list[ScoreItem]) -> list[float]:
        return [Levenshtein.distance(i.tokens, i.golden_tokens) / max(1, len(i.golden_tokens)) for i in items]


class LengthRatio:
    """Sample length over golden length. 1.0 is right; neither more nor less is better, so it is
    reported but cannot rank samples (higher_is_better is None)."""

    name = "length_ratio"
    higher_is_better = None

    def score(self, items: list[ScoreItem]) -> list[float]:
        return [len(i.tokens) / max(1, len(i.golden_tokens)) for i in items]
