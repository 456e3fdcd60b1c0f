"""Generate: sequences of units sampled from a policy, the one way every sample of a round is made.

    generate            K candidates for each of the round's train prompts, with the round's input policy; also
                        each prompt's golden sequence as a sample (kind "golden"), so pairs, scores and judgments
                        refer to golden and synthetic sequences the same way
    generate_heldout    the evaluated policy on every held-out prompt, and on the train probe (a fixed seeded set
                        of train prompts): `evaluate.samples_per_prompt` sampled as candidates are, or one greedy
                        sequence; with seeds that depend on the prompt and the sample's index, never on the round,
                        so rounds compare prompt by prompt

Both go through `generate_samples`: batches of (prompt, index), each written to the store as it is made (a resumed
stage generates only what is missing), in this process or over Dask workers (speechalign/runtime/fan_out.py), by
the configured generation backend (models/generators.py). Each sample has its own seed, named by the round (or
the evaluation), its prompt and its index: a sample is the same whichever batch, process or engine makes it.
"""

from __future__ import annotations

import dataclasses
import logging
import random

from speechalign.config import Config
from speechalign.models.codecs import codec_flattening, golden_units
from speechalign.models.generators import generator_for
from speechalign.models.sampling import Sampling
from speechalign.preference_store.schema import Prompt
from speechalign.preference_store.store import PreferenceStore, open_store
from speechalign.runtime.context import RoundContext
from speechalign.runtime.fan_out import FanOut
from speechalign.runtime.faults import fault_point
from speechalign.runtime.progress import Progress
from speechalign.runtime.results import Candidates, HeldoutSamples
from speechalign.runtime.seeds import derive_seed
from speechalign.runtime.stage import stage

log = logging.getLogger(__name__)


@stage
def generate(ctx: RoundContext) -> Candidates:
    cfg, store, round_id = ctx.cfg, ctx.store, ctx.round.id
    prompts = round_prompts(cfg, store, ctx.number)
    store.add_samples(golden_samples(round_id, prompts, codec_flattening(cfg.codec)))
    g = cfg.generate
    todo = [(p.id, k) for p in prompts for k in range(g.k)]
    made = generate_samples(cfg, store, ctx, "candidate", todo, ctx.round.policy_in, candidate_sampling(cfg),
                            seed=(g.seed, ctx.number))
    samples = [s for s in store.samples(round_id) if s.kind in ("golden", "candidate")]
    return Candidates(sample_ids=tuple(s.id for s in samples), prompts=len(prompts), generated=made["generated"],
                      hit_length_limit=made["unfinished"])


@stage
def generate_heldout(ctx: RoundContext, policy: str) -> HeldoutSamples:
    cfg, store = ctx.cfg, ctx.store
    heldout, probe = store.prompts("heldout"), probe_prompts(cfg, store)
    if not heldout:
        raise RuntimeError("the store has no held-out prompts; set corpus.heldout_fraction > 0 and bootstrap again")
    e = cfg.evaluate
    greedy = e.mode == "greedy"
    sampling = dataclasses.replace(candidate_sampling(cfg), do_sample=not greedy)
    generated = unfinished = 0
    sample_ids: list[int] = []
    for kind, prompts in (("heldout", heldout), ("probe", probe)):
        todo = [(p.id, k) for k in range(1 if greedy else e.samples_per_prompt) for p in prompts]
        made = generate_samples(cfg, store, ctx, kind, todo, policy, sampling, seed=(e.seed, kind))
        generated, unfinished = generated + made["generated"], unfinished + made["unfinished"]
        wanted = {p.id for p in prompts}
        sample_ids += [s.id for s in store.samples(ctx.round.id, kind) if s.prompt_id in wanted]
    return HeldoutSamples(policy=policy, sample_ids=tuple(sample_ids), prompts=len(heldout), probe_prompts=len(probe),
                          generated=generated, hit_length_limit=unfinished)


def candidate_sampling(cfg: Config) -> Sampling:
    g = cfg.generate
    return Sampling(True, g.temperature, g.top_k, g.top_p, g.max_new_tokens)


def round_prompts(cfg: Config, store: PreferenceStore, number: int) -> list[Prompt]:
    """The train prompts of round `number`: all of them, or a seeded subset that changes every round."""
    prompts = store.prompts("train")
    if not prompts:
        raise RuntimeError("the store has no train prompts; run `speechalign bootstrap --manifest ...` first")
    n = cfg.generate.prompts_per_round
    if 0 < n < len(prompts):
        prompts = sorted(random.Random(derive_seed(cfg.generate.seed, "prompts", number)).sample(prompts, n),
                         key=lambda p: p.id)
    return prompts


def probe_prompts(cfg: Config, store: PreferenceStore) -> list[Prompt]:
    """The train probe: a seeded subset of the train prompts, the same every round."""
    train = store.prompts("train")
    n = min(cfg.evaluate.probe_prompts, len(train))
    return sorted(random.Random(derive_seed(cfg.evaluate.seed, "probe")).sample(train, n), key=lambda p: p.id)


def golden_samples(round_id: int, prompts: list[Prompt], flattening) -> list[dict]:
    """Each prompt's golden units (its golden tokens flattened as the LM speaks them) as a sample."""
    return [{"round_id": round_id, "prompt_id": p.id, "kind": "golden", "k": 0,
             "tokens": golden_units(p.golden_tokens, flattening),
             "finished": True, "seed": None, "sampling": None} for p in prompts]


def generate_samples(cfg: Config, store: PreferenceStore, ctx: RoundContext, kind: str, todo: list[tuple[int, int]],
                     policy: str, sampling: Sampling, seed: tuple) -> dict:
    """Generate the round's `kind` samples of `todo` (prompt id, index) that are not stored yet, in batches of
    generate.batch_size; {"generated", "unfinished"} of those made now."""
    done = store.existing_sample_keys(ctx.round.id, kind)
    todo = [item for item in todo if item not in done]
    size = cfg.generate.batch_size
    batches = [todo[i:i + size] for i in range(0, len(todo), size)]
    stage_name = "generate" if kind == "candidate" else "generate_heldout"
    with Progress(f"{stage_name}: {len(todo)} {kind} sequences of round {ctx.number}", len(batches), "batch") as bar, \
            FanOut(cfg, stage_name) as fan:
        shards = fan.run(generate_batches, ctx.round.id, batches, kind, policy, sampling.as_dict(), seed, stage_name,
                         progress=bar)
    return {"generated": len(todo), "unfinished": sum(s["unfinished"] for s in shards)}


def generate_batches(cfg: Config, round_id: int, batches: list[list[tuple[int, int]]], kind: str, policy: str,
                     sampling: dict, seed: tuple, stage_name: str, on_batch=None) -> dict:
    """Generate and store batches of (prompt id, index) with `policy`; skip those already stored. Runs in the round's
    process or in a Dask worker (speechalign/runtime/fan_out.py), so it opens what it needs."""
    store = open_store(cfg.store_url)
    prompts = {p.id: p for p in store.prompts()}
    done = store.existing_sample_keys(round_id, kind)
    generator = generator_for(cfg, policy)
    settings = Sampling(**sampling)
    unfinished = 0
    for number, batch in enumerate(batches, start=1):
        if all(item in done for item in batch):  # a retried shard: this batch was written
            continue
        seeds = [derive_seed(*seed, pid, k) for pid, k in batch]
        items = [(prompts[pid], k) for pid, k in batch]
        outputs = generator.sample([generator.lm.prompt(p.text, p.speaker) for p, _ in items], seeds, settings)
        store.add_samples([
            {"round_id": round_id, "prompt_id": p.id, "kind": kind, "k": k, "tokens": out.units,
             "finished": out.finished, "seed": s if settings.do_sample else None, "sampling": sampling}
            for (p, k), s, out in zip(items, seeds, outputs)
        ])
        unfinished += sum(not o.finished for o in outputs)
        log.debug("%s: batch %d/%d (%d sequences)", stage_name, number, len(batches), len(batch))
        if on_batch:
            on_batch(number)
        fault_point(stage_name, "mid")  # some batches written, others not
    return {"unfinished": unfinished}
