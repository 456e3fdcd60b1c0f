"""The reward of one sample: metric values shaped into [0, 1], weighted, and guarded against degenerate lengths.

    component(value)  = clip((value - worst) / (best - worst), 0, 1)       one per value of [reward] weights
    reward(sample)    = sum(weight * component) / sum(weight)               in [0, 1]
                      = 0 when the sample hit generate.max_new_tokens, or is shorter than
                        reward.min_length_ratio x its golden length (silence, a stutter)

Each value comes from a metric plug-in (models/metrics/), so a reward is made of what the held-out figures are
made of: `asr_cer` and `asr_wer` (Whisper on the decoded audio; an empty transcript is all deletions, CER 1.0, the
worst, never a perfect score), `speaker_similarity`, `dnsmos_ovrl`, `unit_edit_distance` to the golden units. A value
that failed to score (a clip that could not be decoded or heard) gives its component 0.

The online round (tasks/train_online.py) trains on it with GRPO; the best_of_k pair criterion (rejection sampling)
ranks a prompt's candidates by it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from speechalign.config import ConfigError, RewardConfig

# worst and best of each value the reward can weigh: (worst, best), components clipped between them
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "asr_cer": (1.0, 0.0), "asr_wer": (1.0, 0.0), "unit_edit_distance": (1.0, 0.0),
    "speaker_similarity": (0.5, 1.0), "dnsmos_ovrl": (1.0, 4.0), "dnsmos_sig": (1.0, 4.0), "dnsmos_bak": (1.0, 4.0),
    "policy_loglik": (-5.0, 0.0),
}


@dataclass(frozen=True)
class Reward:
    weights: dict[str, float]
    bounds: dict[str, tuple[float, float]]
    min_length_ratio: float

    @classmethod
    def from_config(cls, reward: RewardConfig) -> Reward:
        bounds = {**DEFAULT_BOUNDS, **{k: tuple(v) for k, v in reward.bounds.items()}}
        unbounded = [m for m in reward.weights if m not in bounds]
        if unbounded:
            raise ConfigError(f"reward.weights names {unbounded}, which have no bounds; add them to reward.bounds as "
                              "value = [worst, best], e.g. {nisqa_mos = [1.0, 5.0]}")
        if not any(w > 0 for w in reward.weights.values()):
            raise ConfigError("reward.weights gives no value a weight above 0, e.g. {asr_cer = 1.0}")
        return cls({m: w for m, w in reward.weights.items() if w > 0}, bounds, reward.min_length_ratio)

    def normalised_weights(self) -> list[float]:
        """The weights in `values` order, summing to 1: TRL's weighted sum of the components is then `total`."""
        return [w / sum(self.weights.values()) for w in self.weights.values()]

    @property
    def values(self) -> list[str]:
        """The metric values the reward reads."""
        return list(self.weights)

    def component(self, name: str, value: float | None) -> float:
        if value is None:
            return 0.0
        worst, best = self.bounds[name]
        return min(1.0, max(0.0, (value - worst) / (best - worst)))

    def degenerate(self, units: int, golden_units: int, finished: bool) -> bool:
        """Hit the length limit, or far shorter than the recording's golden units."""
        return not finished or units < self.min_length_ratio * golden_units

    def components(self, values: Mapping[str, float | None], units: int, golden_units: int,
                   finished: bool) -> dict[str, float]:
        """Each weighted value's component in [0, 1] (all 0 for a degenerate sample)."""
        if self.degenerate(units, golden_units, finished):
            return dict.fromkeys(self.weights, 0.0)
        return {name: self.component(name, values.get(name)) for name in self.weights}

    def total(self, components: Mapping[str, float]) -> float:
        return sum(self.weights[n] * c for n, c in components.items()) / sum(self.weights.values())

    def __call__(self, values: Mapping[str, float | None], units: int, golden_units: int, finished: bool) -> float:
        return self.total(self.components(values, units, golden_units, finished))
