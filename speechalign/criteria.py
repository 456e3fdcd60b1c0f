"""Pair criteria: which of a prompt's samples is preferred to which.

- golden_vs_synthetic (SpeechAlign): chosen = the golden units of the recording, rejected = each of the
  model's candidates for that prompt (a candidate identical to the golden is no preference).
- unanimous (GenSR-Pref): among a prompt's candidates (and its golden sample, with
  pairs.include_golden), a pair is kept only when one sample beats the other on every metric of
  pairs.metrics, each by more than its margin (pairs.margins, default 0). No fixed winner, so the
  policy is never pushed toward one target whatever it costs on the other metrics.
- single:<metric>: the same with one metric, for ablations.
- pareto (MagpieTTS's preference pairs from a model's own samples): a prompt's candidates (and golden, with
  pairs.include_golden) are sorted into Pareto fronts over pairs.metrics; the chosen side is a sample of the
  first front that meets every bound of pairs.chosen_limits (e.g. {asr_wer = 0.5}: understandable enough to
  be worth preferring), the rejected side a sample of the last front that it dominates: never a pair whose
  rejected side wins on any of the metrics. A prompt whose first front meets no bound, or that has one front
  only, gives no pair.
- best_of_k (rejection sampling): a prompt's candidate with the highest reward (speechalign/rewards.py, the
  [reward] the online round trains on) against the one with the lowest; with train.loss_type = ["sft"] the round
  is SFT on the best of K samples, the baseline an online recipe has to beat.

A criterion is a plain function of samples and their scores; the pairs stage (tasks/pairs.py) stores what
it selects.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

from speechalign.config import Config, ConfigError
from speechalign.models.metrics import value_directions
from speechalign.preference_store.schema import Sample
from speechalign.rewards import Reward

ScoreTable = dict[int, dict[str, float | None]]  # sample id -> value name -> value (None: failed)
PairRow = tuple[Sample, Sample, dict]


@dataclass
class Selection:
    pairs: list[PairRow]
    considered: int  # candidate pairs the criterion looked at
    skipped_unscored: int = 0  # pairs left out because a sample has no value for a needed metric


def golden_vs_synthetic(samples: list[Sample], scores: ScoreTable, cfg: Config) -> Selection:
    pairs, considered = [], 0
    for kinds in by_prompt(samples).values():
        for golden in kinds["golden"]:
            considered += len(kinds["candidate"])
            rejected = [c for c in kinds["candidate"] if c.tokens != golden.tokens]
            if cfg.pairs.max_pairs_per_prompt:
                # keep the candidates furthest from the golden: the clearest preferences
                rejected.sort(key=lambda c: -(scores.get(c.id, {}).get("unit_edit_distance") or 0.0))
                rejected = rejected[: cfg.pairs.max_pairs_per_prompt]
            for cand in rejected:
                pairs.append((golden, cand, margins(scores.get(golden.id, {}), scores.get(cand.id, {}))))
    return Selection(pairs, considered)


def unanimous(samples: list[Sample], scores: ScoreTable, cfg: Config, metrics: list[str] | None = None) -> Selection:
    metrics = metrics or cfg.pairs.metrics
    directions = value_directions(cfg.score.metrics)
    need = cfg.pairs.margins
    sel = Selection([], 0)
    for kinds in by_prompt(samples).values():
        pool = kinds["candidate"] + (kinds["golden"] if cfg.pairs.include_golden else [])
        kept = []
        for a, b in itertools.combinations(pool, 2):
            sel.considered += 1
            if a.tokens == b.tokens:
                continue
            va, vb = scores.get(a.id, {}), scores.get(b.id, {})
            if any(va.get(m) is None or vb.get(m) is None for m in metrics):
                sel.skipped_unscored += 1
                continue
            # a's advantage over b on each metric, signed so that positive is better
            gain = {m: (va[m] - vb[m]) * (1 if directions[m] else -1) for m in metrics}
            if all(g > need.get(m, 0.0) for m, g in gain.items()):
                kept.append((a, b, margins(va, vb), gain))
            elif all(-g > need.get(m, 0.0) for m, g in gain.items()):
                kept.append((b, a, margins(vb, va), gain))
        if cfg.pairs.max_pairs_per_prompt:
            kept.sort(key=lambda p: -min(abs(g) for g in p[3].values()))  # the clearest wins first
            kept = kept[: cfg.pairs.max_pairs_per_prompt]
        sel.pairs += [(c, r, m) for c, r, m, _ in kept]
    return sel


def single(metric: str):
    def criterion(samples: list[Sample], scores: ScoreTable, cfg: Config) -> Selection:
        return unanimous(samples, scores, cfg, [metric])
    return criterion


def pareto_fronts(pool: list[Sample], values: dict[int, dict[str, float]],
                  directions: dict[str, bool]) -> list[list[Sample]]:
    """Non-dominated sorting: front 0 is dominated by no sample, front 1 only by front 0's, and so on."""
    left, fronts = list(pool), []
    while left:
        front = [a for a in left
                 if not any(dominates(values[b.id], values[a.id], directions) for b in left if b is not a)]
        fronts.append(front)
        left = [a for a in left if a not in front]
    return fronts


def dominates(a: dict[str, float], b: dict[str, float], directions: dict[str, bool]) -> bool:
    """a is at least as good as b on every metric, and better on one."""
    return a != b and all((a[m] >= b[m]) if up else (a[m] <= b[m]) for m, up in directions.items())


def pareto(samples: list[Sample], scores: ScoreTable, cfg: Config) -> Selection:
    directions = {m: d for m, d in value_directions(cfg.score.metrics).items() if m in cfg.pairs.metrics}
    limits = cfg.pairs.chosen_limits
    sel = Selection([], 0)
    for kinds in by_prompt(samples).values():
        pool = kinds["candidate"] + (kinds["golden"] if cfg.pairs.include_golden else [])
        scored = [s for s in pool if all(scores.get(s.id, {}).get(m) is not None for m in directions)]
        sel.skipped_unscored += len(pool) - len(scored)
        sel.considered += len(scored) * (len(scored) - 1) // 2
        values = {s.id: {m: scores[s.id][m] for m in directions} for s in scored}
        fronts = pareto_fronts(scored, values, directions)
        if len(fronts) < 2:
            continue
        chosen = [s for s in fronts[0] if all(
            (values[s.id][m] <= bound) if not directions[m] else (values[s.id][m] >= bound)
            for m, bound in limits.items() if m in values[s.id])]
        kept = [(c, r) for c in chosen for r in fronts[-1]
                if c.tokens != r.tokens and dominates(values[c.id], values[r.id], directions)]
        if cfg.pairs.max_pairs_per_prompt:
            kept = kept[: cfg.pairs.max_pairs_per_prompt]
        sel.pairs += [(c, r, margins(scores[c.id], scores[r.id])) for c, r in kept]
    return sel


def best_of_k(samples: list[Sample], scores: ScoreTable, cfg: Config) -> Selection:
    reward = Reward.from_config(cfg.reward)
    sel = Selection([], 0)
    for kinds in by_prompt(samples).values():
        golden = len(kinds["golden"][0].tokens) if kinds["golden"] else 0
        scored = [c for c in kinds["candidate"] if set(reward.values) <= scores.get(c.id, {}).keys()]
        sel.skipped_unscored += len(kinds["candidate"]) - len(scored)
        sel.considered += len(scored) * (len(scored) - 1) // 2
        ranked = sorted(scored, key=lambda c: reward(scores[c.id], len(c.tokens), golden, c.finished))
        if len(ranked) < 2:
            continue
        worst, best = ranked[0], ranked[-1]
        gain = reward(scores[best.id], len(best.tokens), golden, best.finished) - reward(
            scores[worst.id], len(worst.tokens), golden, worst.finished)
        if gain > 0 and best.tokens != worst.tokens:
            sel.pairs.append((best, worst, {**margins(scores[best.id], scores[worst.id]), "reward": gain}))
    return sel


def by_prompt(samples: list[Sample]) -> dict[int, dict[str, list[Sample]]]:
    grouped: dict[int, dict[str, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        grouped[s.prompt_id][s.kind].append(s)
    return grouped


def margins(chosen: dict[str, float | None], rejected: dict[str, float | None]) -> dict[str, float]:
    """chosen - rejected for every metric both have a value for."""
    return {m: chosen[m] - rejected[m] for m in chosen
            if chosen.get(m) is not None and rejected.get(m) is not None}


def criterion_function(cfg: Config):
    """The function of pairs.criterion (the config names the criteria and checks the name's form)."""
    name = cfg.pairs.criterion
    if name.startswith("single:"):
        return single(name.removeprefix("single:"))
    return {"golden_vs_synthetic": golden_vs_synthetic, "unanimous": unanimous, "pareto": pareto,
            "best_of_k": best_of_k}[name]


def check_criterion(cfg: Config) -> None:
    """Every metric value the criterion ranks by is produced by a [score] plug-in and has a better side; raises
    ConfigError naming the knob to change. Run before any work (speechalign/runtime/preflight.py)."""
    name, names = cfg.pairs.criterion, cfg.ranked_values
    try:
        directions = value_directions(cfg.score.metrics)  # both raise on a plug-in name that does not exist
        heldout_only = value_directions(cfg.score.heldout_metrics)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if name == "golden_vs_synthetic":
        return
    if not names:
        raise ConfigError(f"pairs.metrics is empty; the {name} criterion needs at least one metric")
    unranked = set(cfg.pairs.chosen_limits) - set(names)
    if name == "pareto" and unranked:
        raise ConfigError(f"pairs.chosen_limits names {sorted(unranked)}, which pairs.metrics does not rank by")
    for m in names:
        if m not in directions and m in heldout_only:
            raise ConfigError(f"pair criterion {name} ranks by {m!r}, which is scored on held-out samples only "
                              "(score.heldout_metrics); add its plug-in to score.metrics to score every candidate")
        if m not in directions:
            raise ConfigError(f"pair criterion {name} ranks by {m!r}, which no [score] metric produces; "
                              f"score.metrics {cfg.score.metrics} give {', '.join(directions)}")
        if directions[m] is None:
            raise ConfigError(f"{m!r} has no better direction (it is reported only) and cannot rank samples")


def candidate_diversity(samples: list[Sample]) -> float | None:
    """Mean normalised unit edit distance between the candidates of each prompt (0: all identical)."""
    dists = [Levenshtein.normalized_distance(a.tokens, b.tokens)
             for kinds in by_prompt(samples).values() for a, b in itertools.combinations(kinds["candidate"], 2)]
    return statistics.fmean(dists) if dists else None


