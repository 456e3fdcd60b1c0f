"""Score: every configured metric plug-in on every sample of a round, each (sample, value) once.

Held-out samples also get score.heldout_metrics (ASR by default: pocketsphinx runs at about 0.6x
real time on one core, too slow for every candidate of a round). A plug-in that fails on one sample
records the failure for that sample (value NULL, with the error) and scoring goes on; a resumed stage scores only what is missing. Plug-ins that need the policy
(policy_loglik) score with the policy that made the samples: the round's input policy for candidates
and golden, the evaluated policy for held-out samples.
"""

from __future__ import annotations

import statistics

from speechalign.config import Config
from speechalign.models.metrics import ScoreItem, get_metric, value_directions
from speechalign.preference_store.schema import Sample
from speechalign.preference_store.store import PreferenceStore
from speechalign.tasks.fan_out import FanOut
from speechalign.tasks.progress import StageProgress
from speechalign.tasks.stage import log, open_store


def score_samples(cfg: Config, round_id: int, kinds: tuple[str, ...], policy: str | None = None) -> dict:
    store = open_store(cfg)
    policy = policy or store.round(round_id).policy_in
    samples = [s for s in store.samples(round_id) if s.kind in kinds]
    have = store.scores(round_id)
    failures = 0
    size = max(1, cfg.score.batch_size)
    names = list(cfg.score.metrics)
    if kinds == ("heldout",):
        names += [m for m in cfg.score.heldout_metrics if m not in names]
    with FanOut(cfg, "score") as fan:
        for name in names:
            outputs = value_directions([name]).keys()  # the parent only plans: workers load the models
            todo = [s.id for s in samples if not outputs <= have.get(s.id, {}).keys()]
            batches = [todo[i:i + size] for i in range(0, len(todo), size)]
            progress = StageProgress("score", f"score: {name} on {len(todo)} samples")
            shards = fan.run(score_batches, round_id, batches, name, policy, progress=progress)
            failures += sum(s["failures"] for s in shards)
    return {"samples": len(samples), "failures": failures, **summary(store, round_id, kinds)}


def score_batches(cfg: Config, round_id: int, batches: list[list[int]], name: str, policy: str,
                  on_batch=None) -> dict:
    """Score batches of sample IDs with one metric plug-in and store each (sample, value)."""
    store = open_store(cfg)
    metric = get_metric(name, cfg.score, policy)
    samples = {s.id: s for s in store.samples(round_id)}
    prompts = {p.id: p for p in store.prompts()}
    have = store.scores(round_id)
    failures = 0
    for number, ids in enumerate(batches, start=1):
        batch = [samples[i] for i in ids if not metric.outputs.keys() <= have.get(i, {}).keys()]
        if not batch:  # a retried shard: this batch was written
            continue
        rows = score_batch(metric, batch, [as_item(s, prompts[s.prompt_id]) for s in batch])
        failures += sum(r["error"] is not None for r in rows)
        store.add_scores(rows)
        if on_batch:
            on_batch(number)
    return {"failures": failures}


def as_item(sample: Sample, prompt) -> ScoreItem:
    return ScoreItem(tokens=sample.tokens, golden_tokens=prompt.golden_tokens[0], text=prompt.text,
                     audio_path=sample.audio_path, golden_audio_path=prompt.golden_audio_path, speaker=prompt.speaker)


def score_batch(metric, samples: list[Sample], items: list[ScoreItem]) -> list[dict]:
    """Score a batch; if the batch fails, score item by item so one bad sample costs only itself."""
    try:
        return [row for s, values in zip(samples, metric.score(items), strict=True) for row in rows_for(metric, s, values)]
    except Exception:  # noqa: BLE001 - isolate the failing items below
        rows = []
        for s, item in zip(samples, items):
            try:
                rows += rows_for(metric, s, metric.score([item])[0])
            except Exception as exc:  # noqa: BLE001
                log.warning("metric %s failed on sample %s: %s", metric.name, s.id, exc)
                rows += [{"sample_id": s.id, "metric": out, "value": None, "error": f"{exc.__class__.__name__}: {exc}"}
                         for out in metric.outputs]
        return rows


def rows_for(metric, sample: Sample, values: dict[str, float]) -> list[dict]:
    missing = metric.outputs.keys() - values.keys()
    if missing:
        raise RuntimeError(f"metric {metric.name} returned no {', '.join(sorted(missing))}")
    return [{"sample_id": sample.id, "metric": out, "value": float(values[out]), "error": None} for out in metric.outputs]


def summary(store: PreferenceStore, round_id: int, kinds: tuple[str, ...]) -> dict:
    """Mean of each metric over the round's samples of `kinds` (failed scores left out)."""
    scores = store.scores(round_id)
    by_metric: dict[str, list[float]] = {}
    for s in store.samples(round_id):
        if s.kind in kinds and s.kind != "golden":
            for metric, value in scores.get(s.id, {}).items():
                if value is not None:
                    by_metric.setdefault(metric, []).append(value)
    return {f"mean/{m}": statistics.fmean(v) for m, v in sorted(by_metric.items())}
