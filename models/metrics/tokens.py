"""Token-level metrics: how far a sample's units are from the golden units of the recording, and how
likely the round's policy finds the sample's units."""

from __future__ import annotations

from rapidfuzz.distance import Levenshtein

from speechalign.models.metrics import MetricUnavailable, ScoreItem


class UnitEditDistance:
    """Levenshtein distance between sample and golden units over the golden length (a unit error
    rate: 0 is identical, and it exceeds 1 when the sample is much longer than the golden)."""

    name = "unit_edit_distance"
    needs_audio = False
    outputs = {"unit_edit_distance": False}

    def __init__(self, options=None, policy: str | None = None) -> None:
        pass

    def score(self, items: list[ScoreItem]) -> list[dict[str, float]]:
        return [{self.name: Levenshtein.distance(i.tokens, i.golden_tokens) / max(1, len(i.golden_tokens))}
                for i in items]


class LengthRatio:
    """Sample length over golden length. 1.0 is right; neither more nor less is better, so it is
    reported but cannot rank samples."""

    name = "length_ratio"
    needs_audio = False
    outputs = {"length_ratio": None}

    def __init__(self, options=None, policy: str | None = None) -> None:
        pass

    def score(self, items: list[ScoreItem]) -> list[dict[str, float]]:
        return [{self.name: len(i.tokens) / max(1, len(i.golden_tokens))} for i in items]


class PolicyLogLik:
    """The round's policy's mean log-probability per token of the sample's units (teacher-forced,
    given the sample's prompt). On the golden sample it is the policy's log-likelihood of the golden
    tokens; DPO that pushes everything down shows here."""

    name = "policy_loglik"
    needs_audio = False
    outputs = {"policy_loglik": True}
    uses_policy = True

    def __init__(self, options=None, policy: str | None = None) -> None:
        if not policy:
            raise MetricUnavailable("policy_loglik needs the round's policy; it is scored inside a round")
        self.policy = policy

    def score(self, items: list[ScoreItem]) -> list[dict[str, float]]:
        from speechalign.models.codec_lm import inference_policy  # noqa: PLC0415 - torch model, loaded lazily
        from speechalign.models.likelihood import sequence_nll  # noqa: PLC0415

        lm = inference_policy(self.policy)  # the copy the stage that generated with it holds, not a second one
        nll = sequence_nll(lm, [(lm.prompt(i.text, i.speaker), i.tokens) for i in items])
        return [{self.name: -v} for v in nll]
