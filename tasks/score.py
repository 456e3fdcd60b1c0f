"""Score: every configured metric on every sample of a round, each (sample, metric) once.

A metric that fails on one sample records the failure for that sample (value NULL, with the
error) and scoring goes on; a resumed stage scores only what is missing.
"""

from __future__ import annotations

import statistics

from speechalign.config import Config
from speechalign.models.metrics import ScoreItem, get_metric
from speechalign.preference_store.schema import Sample
from speechalign.preference_store.store import PreferenceStore
from speechalign.tasks.stage import log, open_store

BATCH = 64


def score_samples(cfg: Config, round_id: int, kinds: tuple[str, ...]) -> dict:
    store = open_store(cfg)
    samples = [s for s in store.samples(round_id) if s.kind in kinds]
    prompts = {p.id: p for p in store.prompts()}
    have = store.scores(round_id)
    failures = 0
    for name in cfg.score.metrics:
        metric = get_metric(name)
        todo = [s for s in samples if name not in have.get(s.id, {})]
        for start in range(0, len(todo), BATCH):
            batch = todo[start:start + BATCH]
            items = [as_item(s, prompts[s.prompt_id]) for s in batch]
            rows = score_batch(metric, batch, items)
            failures += sum(r["error"] is not None for r in rows)
            store.add_scores(rows)
    return {"samples": len(samples), "failures": failures, **summary(store, round_id, kinds)}


def as_item(sample: Sample, prompt) -> ScoreItem:
    return ScoreItem(tokens=sample.tokens, golden_tokens=prompt.golden_tokens[0], text=prompt.text,
                     audio_path=sample.audio_path, golden_audio_path=prompt.golden_audio_path)


def score_batch(metric, samples: list[Sample], items: list[ScoreItem]) -> list[dict]:
    """Score a batch; if the batch fails, score item by item so one bad sample costs only itself."""
    try:
        values = metric.score(items)
        return [{"sample_id": s.id, "metric": metric.name, "value": float(v), "error": None}
                for s, v in zip(samples, values)]
    except Exception:  # noqa: BLE001 - isolate the failing items below
        rows = []
        for s, item in zip(samples, items):
            try:
                rows.append({"sample_id": s.id, "metric": metric.name, "value": float(metric.score([item])[0]),
                             "error": None})
            except Exception as exc:  # noqa: BLE001
                log.warning("metric %s failed on sample %s: %s", metric.name, s.id, exc)
                rows.append({"sample_id": s.id, "metric": metric.name, "value": None,
                             "error": f"{exc.__class__.__name__}: {exc}"})
        return rows


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
