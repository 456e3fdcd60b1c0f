"""Generate: K sampled candidate unit sequences per train prompt with the round's policy.

Also writes each prompt's golden sequence as a sample of the round (kind "golden"), so pairs, scores
and judgments refer to golden and synthetic sequences the same way. Candidates are written one batch
at a time; a resumed stage generates only what is missing, with the same seeds.
"""

from __future__ import annotations

import logging
import random

from speechalign.config import Config
from speechalign.faults import fault_point
from speechalign.models.codec_lm import load_codec_lm
from speechalign.models.sampling import Sampling, generate_units
from speechalign.preference_store.schema import Prompt
from speechalign.preference_store.store import PreferenceStore, open_store
from speechalign.seeds import derive_seed
from speechalign.tasks.context import RoundContext
from speechalign.tasks.fan_out import FanOut
from speechalign.tasks.progress import Progress
from speechalign.tasks.results import Candidates
from speechalign.tasks.stage import stage

log = logging.getLogger(__name__)


@stage
def generate(ctx: RoundContext) -> Candidates:
    store, round_id = ctx.store, ctx.round.id
    prompts = round_prompts(ctx.cfg, store, ctx.number)
    store.add_samples(golden_samples(round_id, prompts))
    done = store.existing_sample_keys(round_id, "candidate")
    todo = [(p.id, k) for p in prompts for k in range(ctx.cfg.generate.k) if (p.id, k) not in done]
    size = ctx.cfg.generate.batch_size
    batches = [todo[i:i + size] for i in range(0, len(todo), size)]
    description = f"generate: {len(todo)} candidate sequences of round {ctx.number}"
    with Progress(description, len(batches), "batch") as progress, FanOut(ctx.cfg, "generate") as fan:
        shards = fan.run(generate_batches, round_id, batches, progress=progress)
    samples = [s for s in store.samples(round_id) if s.kind in ("golden", "candidate")]
    return Candidates(sample_ids=tuple(s.id for s in samples), prompts=len(prompts), generated=len(todo),
                      hit_length_limit=sum(s["unfinished"] for s in shards))


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


def golden_samples(round_id: int, prompts: list[Prompt]) -> list[dict]:
    return [{"round_id": round_id, "prompt_id": p.id, "kind": "golden", "k": 0, "tokens": p.golden_tokens[0],
             "finished": True, "seed": None, "sampling": None} for p in prompts]


def generate_batches(cfg: Config, round_id: int, batches: list[list[tuple[int, int]]], on_batch=None) -> dict:
    """Generate and store batches of (prompt id, k) with the round's policy; skip those already stored.
    Runs in the round's process or in a Dask worker (tasks/fan_out.py), so it opens what it needs."""
    store = open_store(cfg.store_url)
    rnd = store.round(round_id)
    prompts = {p.id: p for p in store.prompts("train")}
    done = store.existing_sample_keys(round_id, "candidate")
    lm = load_codec_lm(rnd.policy_in)
    g = cfg.generate
    sampling = Sampling(True, g.temperature, g.top_k, g.top_p, g.max_new_tokens)
    unfinished = 0
    for number, batch in enumerate(batches, start=1):
        if all(item in done for item in batch):  # a retried shard: this batch was written
            continue
        # the seed names the batch's first item, so a resumed stage (or a shard) reproduces the same batches
        seed = derive_seed(g.seed, rnd.number, *batch[0])
        items = [(prompts[pid], k) for pid, k in batch]
        outputs = generate_units(lm, [lm.prompt(p.text, p.speaker) for p, _ in items], sampling, seed)
        store.add_samples([
            {"round_id": round_id, "prompt_id": p.id, "kind": "candidate", "k": k, "tokens": out.units,
             "finished": out.finished, "seed": seed, "sampling": {**sampling.as_dict(), "batch_position": i}}
            for i, ((p, k), out) in enumerate(zip(items, outputs))
        ])
        unfinished += sum(not o.finished for o in outputs)
        log.debug("generate: batch %d/%d (%d sequences)", number, len(batches), len(batch))
        if on_batch:
            on_batch(number)
        fault_point("generate", "mid")  # some batches written, others not
    return {"unfinished": unfinished}
