"""Score: metric plug-ins on samples, each (sample, value) once.

    score               a round's golden and candidate samples (`candidate_metrics`): the plug-ins the pair
                        criterion ranks by, and those that read only the units (unit edit distance, length ratio:
                        cheap); with score.candidates = "all", every plug-in of score.metrics. (DPO's own
                        logps/chosen and logps/rejected track the policy's likelihood of the pairs, which
                        policy_loglik on candidates would repeat at a model's cost.)
    score_heldout       held-out samples: every plug-in of score.metrics and score.heldout_metrics (ASR by
                        default); the train probe's: those of them in evaluate.probe_metrics

A plug-in that fails on one sample records the failure for that sample (value NULL, with the error) and
scoring goes on; a resumed stage scores only what is missing. Plug-ins that need the policy
(policy_loglik) score with the policy that made the samples: the round's input policy for candidates and
golden, the evaluated policy for held-out samples.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Mapping
from itertools import groupby

from speechalign.config import Config
from speechalign.models.codecs import Flattening, codec_flattening, golden_units
from speechalign.models.metrics import ScoreItem, get_metric, is_cheap, value_directions
from speechalign.preference_store.schema import Sample
from speechalign.preference_store.store import PreferenceStore, open_store
from speechalign.runtime.context import RoundContext
from speechalign.runtime.fan_out import FanOut
from speechalign.runtime.progress import Progress
from speechalign.runtime.results import Audio, HeldoutAudio, HeldoutScores, Scores
from speechalign.runtime.stage import stage

log = logging.getLogger(__name__)


@stage
def score(ctx: RoundContext, audio: Audio) -> Scores:
    return score_samples(ctx.cfg, ctx.store, ctx.round.id, audio.sample_ids, candidate_metrics(ctx.cfg),
                         ctx.round.policy_in)


@stage
def score_heldout(ctx: RoundContext, audio: HeldoutAudio, policy: str) -> HeldoutScores:
    cfg, store, round_id = ctx.cfg, ctx.store, ctx.round.id
    kinds = {i: s.kind for i, s in store.samples_by_id(audio.sample_ids).items()}
    failures = 0
    for kind, metrics in (("heldout", heldout_metrics(cfg)), ("probe", probe_metrics(cfg))):
        ids = tuple(i for i in audio.sample_ids if kinds[i] == kind)
        failures += score_samples(cfg, store, round_id, ids, metrics, policy).failures
    heldout = [i for i in audio.sample_ids if kinds[i] == "heldout"]
    return HeldoutScores(sample_ids=audio.sample_ids, metrics=tuple(heldout_metrics(cfg)), failures=failures,
                         means=sample_means(store, round_id, heldout))


def candidate_metrics(cfg: Config) -> list[str]:
    """The plug-ins that score a round's golden and candidate samples (see the module's docstring)."""
    if cfg.score.candidates == "all":
        return list(cfg.score.metrics)
    ranked = set(cfg.ranked_values)
    return [m for m in cfg.score.metrics if is_cheap(m) or ranked & value_directions([m]).keys()]


def heldout_metrics(cfg: Config) -> list[str]:
    return list(dict.fromkeys(cfg.score.metrics + cfg.score.heldout_metrics))


def probe_metrics(cfg: Config) -> list[str]:
    """The held-out plug-ins that also score the train probe (evaluate.probe_metrics)."""
    return [m for m in heldout_metrics(cfg) if m in cfg.evaluate.probe_metrics]


def score_samples(cfg: Config, store: PreferenceStore, round_id: int, sample_ids: tuple[int, ...],
                  metrics: list[str], policy: str) -> Scores:
    have = store.scores(round_id)
    failures = 0
    size = max(1, cfg.score.batch_size)
    with FanOut(cfg, "score") as fan:
        for name in metrics:
            outputs = value_directions([name]).keys()  # the parent only plans: workers load the models
            todo = [i for i in sample_ids if not outputs <= have.get(i, {}).keys()]
            batches = [todo[i:i + size] for i in range(0, len(todo), size)]
            with Progress(f"score: {name} on {len(todo)} samples", len(batches), "batch") as progress:
                shards = fan.run(score_batches, round_id, batches, name, policy, progress=progress)
            failures += sum(s["failures"] for s in shards)
    return Scores(sample_ids=tuple(sample_ids), metrics=tuple(metrics), failures=failures,
                  means=sample_means(store, round_id, sample_ids))


def score_batches(cfg: Config, round_id: int, batches: list[list[int]], name: str, policy: str,
                  on_batch=None) -> dict:
    """Score batches of sample IDs with one metric plug-in and store each (sample, value). Runs in the
    round's process or in a Dask worker (speechalign/runtime/fan_out.py), so it opens what it needs."""
    store = open_store(cfg.store_url)
    metric = get_metric(name, cfg.score, policy)
    samples = {s.id: s for s in store.samples(round_id)}
    prompts = {p.id: p for p in store.prompts()}
    have = store.scores(round_id)
    flattening = codec_flattening(cfg.codec)
    failures = 0
    for number, ids in enumerate(batches, start=1):
        batch = [samples[i] for i in ids if not metric.outputs.keys() <= have.get(i, {}).keys()]
        if batch:  # else a retried shard: this batch was written
            rows = score_batch(metric, batch, [as_item(s, prompts[s.prompt_id], flattening, cfg.model.deduplicate)
                                               for s in batch])
            failures += sum(r["error"] is not None for r in rows)
            store.add_scores(rows)
        if on_batch:
            on_batch(number)
    return {"failures": failures}


def as_item(sample: Sample, prompt, flattening: Flattening, deduplicate: bool = False) -> ScoreItem:
    """A sample with its prompt's golden reference: its golden units, flattened as the sample's are (the codec's
    flattening); a deduplicating model's units are compared with the golden units deduplicated."""
    golden = golden_units(prompt.golden_tokens, flattening)
    if deduplicate and sample.kind != "golden":
        golden = [u for u, _ in groupby(golden)]
    return ScoreItem(tokens=sample.tokens, golden_tokens=golden, text=prompt.text, audio_path=sample.audio_path,
                     golden_audio_path=prompt.golden_audio_path, speaker=prompt.speaker)


def score_batch(metric, samples: list[Sample], items: list[ScoreItem]) -> list[dict]:
    """Score rows of a batch of samples (a failed sample's values NULL, with its error)."""
    results = score_items(metric, items, [f"sample {s.id}" for s in samples])
    return [{"sample_id": s.id, **row} for s, result in zip(samples, results, strict=True)
            for row in value_rows(metric, result)]


def score_items(metric, items: list[ScoreItem], names: list[str]) -> list[dict[str, float] | Exception]:
    """Each item's values, or the exception it failed with: if the batch fails, item by item, so one bad item
    costs only itself (`names` name them in the warning)."""
    try:
        found = metric.score(items)
        if len(found) != len(items):
            raise RuntimeError(f"metric {metric.name} returned {len(found)} results for {len(items)} items")
        return [checked(metric, values) for values in found]
    except Exception:  # noqa: BLE001 - isolate the failing items below
        out: list[dict[str, float] | Exception] = []
        for item, name in zip(items, names, strict=True):
            try:
                out.append(checked(metric, metric.score([item])[0]))
            except Exception as exc:  # noqa: BLE001
                log.warning("metric %s failed on %s: %s", metric.name, name, exc)
                out.append(exc)
        return out


def checked(metric, values: dict[str, float]) -> dict[str, float]:
    missing = metric.outputs.keys() - values.keys()
    if missing:
        raise RuntimeError(f"metric {metric.name} returned no {', '.join(sorted(missing))}")
    return values


def value_rows(metric, result: dict[str, float] | Exception) -> list[dict]:
    """One row per value of the plug-in: {"metric", "value", "error"}."""
    if isinstance(result, Exception):
        error = f"{result.__class__.__name__}: {result}"
        return [{"metric": out, "value": None, "error": error} for out in metric.outputs]
    return [{"metric": out, "value": float(result[out]), "error": None} for out in metric.outputs]


def sample_means(store: PreferenceStore, round_id: int, sample_ids: Iterable[int]) -> dict[str, float]:
    """Mean of each value over the samples that are not golden (failed scores left out)."""
    scores, wanted = store.scores(round_id), set(sample_ids)
    return value_means(scores.get(s.id, {}) for s in store.samples(round_id) if s.id in wanted and s.kind != "golden")


def value_means(rows: Iterable[Mapping[str, float | None]]) -> dict[str, float]:
    """{value name: mean} over rows of {value name: value}, a missing or failed (None) value left out."""
    found: dict[str, list[float]] = {}
    for row in rows:
        for name, value in row.items():
            if value is not None:
                found.setdefault(name, []).append(value)
    return {name: statistics.fmean(values) for name, values in sorted(found.items())}
