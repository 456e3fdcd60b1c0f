"""Metrics are plug-ins with one interface: a name, the values it produces (each with the way that is
better) and a batched `score`.

A plug-in scores a batch of `ScoreItem`s (a sample with its prompt's golden reference) and returns one
dict of values per item: `{"dnsmos_sig": 3.1, "dnsmos_bak": 3.9, "dnsmos_ovrl": 2.7}`. Each value is a
row of the store's `scores` table, so criteria and reports name values, not plug-ins. Models a plug-in
needs are loaded once per worker (`get_metric` caches instances by name and options). Register a new
plug-in in `_registry`; its constructor takes the campaign's `[score]` section and the round's policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from speechalign.config import Config, ConfigError, ScoreConfig


@dataclass
class ScoreItem:
    tokens: list[int]  # the sample's layer-1 units
    golden_tokens: list[int]  # the recording's layer-1 units
    text: str
    audio_path: str | None = None  # the sample decoded (tasks/decode.py)
    golden_audio_path: str | None = None  # the real recording
    speaker: str | None = None


class Metric(Protocol):
    name: str  # the plug-in's name in [score] metrics
    outputs: dict[str, bool | None]  # value name -> higher is better (None: reported only, never ranks samples)
    needs_audio: bool  # scores the decoded WAV (else only the units: cheap, and no decoding needed)

    def score(self, items: list[ScoreItem]) -> list[dict[str, float]]: ...


class MetricUnavailable(RuntimeError):
    """A plug-in cannot run here (weights not given, model missing): the message says where they go."""


def _registry() -> dict[str, type]:
    from speechalign.models.metrics.asr import AsrErrorRate
    from speechalign.models.metrics.dnsmos import Dnsmos
    from speechalign.models.metrics.reference_models import Nisqa, SpeechBertScore
    from speechalign.models.metrics.speaker import SpeakerSimilarity
    from speechalign.models.metrics.tokens import LengthRatio, PolicyLogLik, UnitEditDistance

    return {m.name: m for m in (UnitEditDistance, LengthRatio, PolicyLogLik, Dnsmos, SpeakerSimilarity,
                                AsrErrorRate, SpeechBertScore, Nisqa)}


def value_directions(names: list[str]) -> dict[str, bool | None]:
    """Every value the named plug-ins produce, with its direction, without loading any model."""
    registry = _registry()
    out: dict[str, bool | None] = {}
    for name in names:
        _check(name, registry)
        out.update(registry[name].outputs)
    return out


def plugins_for(values: list[str]) -> list[str]:
    """The plug-ins that produce the named values, each once, in the registry's order."""
    registry = _registry()
    found = [name for name, plugin in registry.items() if set(plugin.outputs) & set(values)]
    missing = set(values) - {v for name in found for v in registry[name].outputs}
    if missing:
        known = sorted(v for plugin in registry.values() for v in plugin.outputs)
        raise ValueError(f"no metric plug-in produces {sorted(missing)}; the values are {', '.join(known)}")
    return found


def needs_audio(names: list[str]) -> bool:
    """Whether any of the named plug-ins listens to the samples (so they must be decoded first)."""
    registry = _registry()
    for name in names:
        _check(name, registry)
    return any(registry[name].needs_audio for name in names)


# held-out figures evaluate adds to the plug-ins' values (tasks/evaluate.py, speechalign/stats/distribution_gap.py)
HELDOUT_EXTRAS = {"golden_nll": False, "finished_rate": True, "unit_kl": False, "bigram_kl": False}


def is_cheap(name: str) -> bool:
    """The plug-in reads only the units: no audio, no model (unit edit distance, length ratio)."""
    registry = _registry()
    _check(name, registry)
    return not registry[name].needs_audio and not uses_policy(name)


def uses_policy(name: str) -> bool:
    """The plug-in scores with the round's policy (policy_loglik): its value belongs to a model, not to a sample."""
    registry = _registry()
    _check(name, registry)
    return getattr(registry[name], "uses_policy", False)


def heldout_directions(score) -> dict[str, bool]:
    """Held-out figures that have a better side (reported-only ones like length_ratio are left out), for the
    campaign's [score] section."""
    found = {**value_directions(score.metrics + score.heldout_metrics), **HELDOUT_EXTRAS}
    return {m: d for m, d in found.items() if d is not None}


def check_metric_names(cfg: Config) -> None:
    """Every plug-in the config names exists, and every value the evaluation and the gate read is produced by one;
    raises ConfigError naming the knob. Run before any work (speechalign/runtime/preflight.py)."""
    try:
        value_directions(cfg.score.metrics + cfg.score.heldout_metrics)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    try:
        value_directions(cfg.evaluate.probe_metrics)
    except ValueError as error:
        raise ConfigError(f"evaluate.probe_metrics: {error}") from None
    known = heldout_directions(cfg.score)
    unknown = [m for m in cfg.guard.gate_metrics if m not in known]
    if unknown:
        raise ConfigError(f"guard.gate_metrics {unknown}: not held-out values with a better side; they can be "
                          f"{', '.join(known)}")


def _check(name: str, registry: dict) -> None:
    if name not in registry:
        raise ValueError(f"unknown metric {name!r}; [score] metrics can be {', '.join(sorted(registry))}")


_CACHE: dict[tuple, Metric] = {}


def get_metric(name: str, options=None, policy: str | None = None) -> Metric:
    """The plug-in `name`, built once in this process and rebuilt only when its options (the campaign's
    ScoreConfig; None: the defaults) or, for plug-ins that score with the policy, the policy change.
    Only the latest instance of each plug-in is kept, so a long campaign holds one copy of each model."""
    registry = _registry()
    _check(name, registry)
    options = options if options is not None else ScoreConfig()
    key = (name, json.dumps(vars(options), sort_keys=True, default=str), policy if uses_policy(name) else None)
    if key not in _CACHE:
        for old in [k for k in _CACHE if k[0] == name]:  # one instance per plug-in: models are big, policies change
            del _CACHE[old]
        _CACHE[key] = registry[name](options, policy)
    return _CACHE[key]
