"""Evaluate: the policy on held-out prompts, with the same seeds every round so rounds compare prompt by prompt.

    samples = sample(...)             each held-out prompt: `samples_per_prompt` sequences sampled as the
                                      candidates are (fixed seeds), or one greedy sequence; and the same on a
                                      fixed set of train prompts (the train probe)
    audio = decode_samples(...)       every one of them to a WAV
    scores = score_samples(...)       every metric of score.metrics and score.heldout_metrics; the probe's
                                      those of evaluate.probe_metrics (WER and UED, which the report shows)
    figures                           per prompt, then their mean; the distribution gap between golden and
                                      sampled units (unit_kl, bigram_kl); each figure's change against round 0,
                                      the round before and the champion, with its paired bootstrap 95% interval
                                      over prompts (speechalign/intervals.py; the gap's: distribution_gap.py)

Held-out prompts never take part in pairs or training. The train probe tells "alignment does nothing"
from "alignment does not generalise": its prompts are trained on. The policy's teacher-forced likelihood
of the golden tokens (`golden_nll`) has no decoding noise. Round 0 also scores the ceiling, once: the
held-out recordings themselves, and their golden tokens through the same decoding path as every sample;
bootstrap scored it for the work directory, so round 0 only reads it unless its scoring setup differs
(tasks/ceiling.py).
"""

from __future__ import annotations

import random
import statistics

from speechalign.config import Config
from speechalign.intervals import changes
from speechalign.models.codec_lm import CodecLM, load_codec_lm
from speechalign.models.likelihood import sequence_nll
from speechalign.models.sampling import Sampling, generate_units
from speechalign.preference_store.schema import Prompt
from speechalign.preference_store.store import PreferenceStore
from speechalign.seeds import derive_seed
from speechalign.tasks.ceiling import measure_ceiling
from speechalign.tasks.context import RoundContext
from speechalign.tasks.decode import decode_samples
from speechalign.tasks.distribution_gap import gap, gap_changes, save_projection
from speechalign.tasks.progress import Progress
from speechalign.tasks.results import Heldout
from speechalign.tasks.score import heldout_metrics, score_samples
from speechalign.tasks.stage import stage

GAP_FIGURE = "distribution_gap.png"


@stage
def evaluate(ctx: RoundContext, policy: str) -> Heldout:
    cfg, store, round_id = ctx.cfg, ctx.store, ctx.round.id
    lm = load_codec_lm(policy)
    heldout, probe = store.prompts("heldout"), probe_prompts(cfg, store)
    if not heldout:
        raise RuntimeError("the store has no held-out prompts; set corpus.heldout_fraction > 0 and bootstrap again")
    sampled = {kind: sample(cfg, store, round_id, lm, prompts, kind) for kind, prompts in
               (("heldout", heldout), ("probe", probe))}
    audio = decode_samples(cfg, store, ctx.number, sampled["heldout"] + sampled["probe"])
    failures = 0
    for kind, metrics in (("heldout", heldout_metrics(cfg)), ("probe", probe_metrics(cfg))):
        ids = set(sampled[kind])
        decoded = tuple(i for i in audio.sample_ids if i in ids)
        failures += score_samples(cfg, store, round_id, decoded, metrics, policy).failures

    per_prompt = prompt_figures(store, round_id, "heldout")
    per_prompt["golden_nll"] = golden_nll(lm, heldout, cfg.generate.batch_size)
    samples = store.samples(round_id, "heldout")
    golden, synthetic = [p.golden_tokens[0] for p in heldout], [s.tokens for s in samples]
    ctx.layout.round_dir(ctx.number).mkdir(parents=True, exist_ok=True)
    save_projection(golden, synthetic, f"round {ctx.number}: golden vs the policy's units, held out",
                    ctx.layout.round_dir(ctx.number) / GAP_FIGURE)
    against = {name: record for name, record in
               {"vs_base": ctx.base, "vs_previous": ctx.previous, "vs_champion": ctx.champion}.items()
               if record is not None and record.heldout is not None}
    golden_of, units_of = {p.id: p.golden_tokens[0] for p in heldout}, units_by_prompt(samples)
    compared = {record.number: {**changes(per_prompt, record.heldout.per_prompt),
                                **gap_changes(golden_of, units_of, units_by_prompt(round_samples(ctx, record.number)))}
                for record in against.values()}  # once per round (round 0 is often base, previous and champion)
    return Heldout(
        policy=policy, prompts=len(heldout), samples=len(samples), mode=cfg.evaluate.mode,
        metrics={**means(per_prompt), **gap(golden, synthetic)}, per_prompt=per_prompt,
        changes={name: compared[record.number] for name, record in against.items()},
        probe=means(prompt_figures(store, round_id, "probe")),
        ceiling=measure_ceiling(cfg, store) if ctx.number == 0 else {},
        decode=audio, score_failures=failures)


def probe_metrics(cfg: Config) -> list[str]:
    """The held-out plug-ins that also score the train probe (evaluate.probe_metrics)."""
    return [m for m in heldout_metrics(cfg) if m in cfg.evaluate.probe_metrics]


def round_samples(ctx: RoundContext, number: int) -> list:
    """Round `number`'s held-out samples (a round this one is compared with)."""
    return ctx.store.samples(ctx.store.round_number(ctx.campaign.id, number).id, "heldout")


def units_by_prompt(samples) -> dict[int, list[list[int]]]:
    out: dict[int, list[list[int]]] = {}
    for s in samples:
        out.setdefault(s.prompt_id, []).append(s.tokens)
    return out


def probe_prompts(cfg: Config, store: PreferenceStore) -> list[Prompt]:
    """The train probe: a seeded subset of the train prompts, the same every round."""
    train = store.prompts("train")
    n = min(cfg.evaluate.probe_prompts, len(train))
    return sorted(random.Random(derive_seed(cfg.evaluate.seed, "probe")).sample(train, n), key=lambda p: p.id)


def sample(cfg: Config, store: PreferenceStore, round_id: int, lm: CodecLM, prompts: list[Prompt],
           kind: str) -> tuple[int, ...]:
    """The round's `kind` samples of `prompts` (generated now where missing), by id. Seeds depend on the
    prompt, the sample's index and the evaluation seed, never on the round: rounds compare prompt by prompt."""
    e, g = cfg.evaluate, cfg.generate
    greedy = e.mode == "greedy"
    sampling = Sampling(not greedy, g.temperature, g.top_k, g.top_p, g.max_new_tokens)
    done = store.existing_sample_keys(round_id, kind)
    todo = [(p, k) for k in range(1 if greedy else e.samples_per_prompt) for p in prompts if (p.id, k) not in done]
    with Progress(f"evaluate: {len(todo)} {kind} samples", len(todo), "sample") as progress:
        for start in range(0, len(todo), g.batch_size):
            batch = todo[start:start + g.batch_size]
            seed = derive_seed(e.seed, kind, batch[0][0].id, batch[0][1])
            outputs = generate_units(lm, [lm.prompt(p.text, p.speaker) for p, _ in batch], sampling, seed)
            store.add_samples([
                {"round_id": round_id, "prompt_id": p.id, "kind": kind, "k": k, "tokens": out.units,
                 "finished": out.finished, "seed": seed if not greedy else None,
                 "sampling": {**sampling.as_dict(), "batch_position": i}}
                for i, ((p, k), out) in enumerate(zip(batch, outputs))
            ])
            progress.advance(len(batch))
    wanted = {p.id for p in prompts}
    return tuple(s.id for s in store.samples(round_id, kind) if s.prompt_id in wanted)


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


def golden_nll(lm: CodecLM, prompts: list[Prompt], batch_size: int) -> dict[int, float]:
    """Per prompt, the policy's mean negative log-likelihood per token of the golden units (teacher-forced)."""
    nll = sequence_nll(lm, [(lm.prompt(p.text, p.speaker), p.golden_tokens[0]) for p in prompts], batch_size)
    return {p.id: v for p, v in zip(prompts, nll)}


def means(per_prompt: dict[str, dict[int, float]]) -> dict[str, float]:
    return {m: statistics.fmean(v.values()) for m, v in sorted(per_prompt.items()) if v}
