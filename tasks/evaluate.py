"""Evaluate: the held-out figures of a policy, from its scored held-out samples, and their changes with intervals.

The round flow makes the samples first, in the open: generate_heldout (tasks/generate.py), decode_heldout
(tasks/decode.py), score_heldout (tasks/score.py). This stage turns their scores into figures:

    per prompt          each value's mean over the prompt's samples (failed scores left out), the share of its
                        samples that ended with a stop token (`finished_rate`), and the policy's teacher-forced
                        likelihood of the prompt's golden tokens (`golden_nll`: no decoding noise)
    figures             their means over prompts, and the distribution gap between golden and sampled units
                        (unit_kl, bigram_kl)
    changes             each figure's change against round 0, the round before and the champion, with its paired
                        bootstrap 95% interval over prompts (speechalign/stats/intervals.py; the gap's:
                        speechalign/stats/distribution_gap.py)

Held-out prompts never take part in pairs or training. The train probe (the same figures on a fixed set of train
prompts) tells "alignment does nothing" from "alignment does not generalise": its prompts are trained on.

Round 0 also has the ceiling (stage `ceiling`): the held-out recordings and their golden tokens decoded, scored
with the same plug-ins. Bootstrap scored it for the work directory's setup, so round 0 reads it, and scores it
only when the campaign's own scoring setup differs (bootstrap/ceiling.py).
"""

from __future__ import annotations

import statistics

from speechalign.bootstrap.ceiling import measure_ceiling
from speechalign.models.codec_lm import CodecLM, inference_policy
from speechalign.models.codecs import Flattening, codec_flattening, golden_units
from speechalign.models.likelihood import sequence_nll
from speechalign.models.precision import decide_precision
from speechalign.preference_store.schema import Prompt
from speechalign.preference_store.store import PreferenceStore
from speechalign.runtime.context import RoundContext
from speechalign.runtime.results import Ceiling, Heldout, HeldoutScores
from speechalign.runtime.stage import stage
from speechalign.stats.distribution_gap import gap, gap_changes, save_projection
from speechalign.stats.intervals import changes
from speechalign.tasks.score import value_means

GAP_FIGURE = "distribution_gap.png"


@stage
def evaluate(ctx: RoundContext, policy: str, scores: HeldoutScores) -> Heldout:
    cfg, store, round_id = ctx.cfg, ctx.store, ctx.round.id
    heldout = store.prompts("heldout")
    per_prompt = prompt_figures(store, round_id, "heldout")
    lm = inference_policy(policy, decide_precision(cfg.model.dtype))
    flattening = codec_flattening(cfg.codec)
    per_prompt["golden_nll"] = golden_nll(lm, heldout, cfg.generate.batch_size, flattening)
    samples = store.samples(round_id, "heldout")
    golden_of = {p.id: golden_units(p.golden_tokens, flattening) for p in heldout}
    golden, synthetic = [golden_of[p.id] for p in heldout], [s.tokens for s in samples]
    ctx.layout.round_dir(ctx.number).mkdir(parents=True, exist_ok=True)
    save_projection(golden, synthetic, f"round {ctx.number}: golden vs the policy's units, held out",
                    ctx.layout.round_dir(ctx.number) / GAP_FIGURE)
    against = {name: record for name, record in
               {"vs_base": ctx.base, "vs_previous": ctx.previous, "vs_champion": ctx.champion}.items()
               if record is not None and record.heldout is not None}
    units_of = units_by_prompt(samples)
    compared = {record.number: {**changes(per_prompt, record.heldout.per_prompt),
                                **gap_changes(golden_of, units_of, units_by_prompt(round_samples(ctx, record.number)))}
                for record in against.values()}  # once per round (round 0 is often base, previous and champion)
    return Heldout(
        policy=policy, prompts=len(heldout), samples=len(samples), mode=cfg.evaluate.mode,
        metrics={**prompt_means(per_prompt), **gap(golden, synthetic)}, per_prompt=per_prompt,
        changes={name: compared[record.number] for name, record in against.items()},
        probe=prompt_means(prompt_figures(store, round_id, "probe")))


@stage
def ceiling(ctx: RoundContext) -> Ceiling:
    """Round 0: the ceiling rows for the campaign's scoring setup (scored at bootstrap; here only if it differs)."""
    return Ceiling(rows=measure_ceiling(ctx.cfg, ctx.store))


def round_samples(ctx: RoundContext, number: int) -> list:
    """Round `number`'s held-out samples (a round this one is compared with)."""
    return ctx.store.samples(ctx.store.round_number(ctx.campaign.id, number).id, "heldout")


def units_by_prompt(samples) -> dict[int, list[list[int]]]:
    out: dict[int, list[list[int]]] = {}
    for s in samples:
        out.setdefault(s.prompt_id, []).append(s.tokens)
    return out


def prompt_figures(store: PreferenceStore, round_id: int, kind: str) -> dict[str, dict[int, float]]:
    """Per value, per prompt: the mean over the prompt's `kind` samples (failed scores left out), and the
    share of its samples that ended with a stop token (`finished_rate`)."""
    samples = store.samples(round_id, kind)
    scores = store.scores(round_id, kind)
    values: dict[str, dict[int, list[float]]] = {}
    for s in samples:
        for metric, value in {**scores.get(s.id, {}), "finished_rate": float(s.finished)}.items():
            if value is not None:
                values.setdefault(metric, {}).setdefault(s.prompt_id, []).append(value)
    return {m: {p: statistics.fmean(v) for p, v in by_prompt.items()} for m, by_prompt in values.items()}


def prompt_means(per_prompt: dict[str, dict[int, float]]) -> dict[str, float]:
    """Each figure's mean over prompts."""
    return value_means({metric: value} for metric, by_prompt in per_prompt.items() for value in by_prompt.values())


def golden_nll(lm: CodecLM, prompts: list[Prompt], batch_size: int, flattening: Flattening) -> dict[int, float]:
    """Per prompt, the policy's mean negative log-likelihood per token of the golden units (teacher-forced)."""
    nll = sequence_nll(lm, [(lm.prompt(p.text, p.speaker), golden_units(p.golden_tokens, flattening))
                            for p in prompts], batch_size)
    return {p.id: v for p, v in zip(prompts, nll)}
