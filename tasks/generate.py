"""Generate: K sampled candidate unit sequences per train prompt with the round's policy.

Also writes each prompt's golden sequence as a sample of the round (kind "golden"), so pairs,
scores and judgments refer to golden and synthetic sequences the same way.
Candidates are written one batch at a time; a resumed stage generates only what is missing.
"""

from __future__ import annotations

import random

from speechalign.config import Config
from speechalign.models.codec_lm import load_codec_lm
from speechalign.models.sampling import Sampling, generate_units
from speechalign.preference_store.schema import Prompt
from speechalign.tasks.fan_out import FanOut
from speechalign.tasks.progress import StageProgress
from speechalign.tasks.stage import derive_seed, fault_point, log, open_store


def round_prompts(cfg: Config, number: int) -> list[Prompt]:
    """The train prompts of round `number`: all of them, or a seeded subset that changes every round."""
    prompts = open_store(cfg).prompts("train")
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


def generate_candidates(cfg: Config, round_id: int) -> dict:
    store = open_store(cfg)
    rnd = store.round(round_id)
    prompts = round_prompts(cfg, rnd.number)
    store.add_samples(golden_samples(round_id, prompts))
    done = store.existing_sample_keys(round_id, "candidate")
    todo = [(p.id, k) for p in prompts for k in range(cfg.generate.k) if (p.id, k) not in done]
    batches = [todo[i:i + cfg.generate.batch_size] for i in range(0, len(todo), cfg.generate.batch_size)]
    progress = StageProgress("generate", f"generate: {len(todo)} candidate sequences of round {rnd.number}")
    with FanOut(cfg, "generate") as fan:
        shards = fan.run(generate_batches, round_id, batches, progress=progress)
    return {"prompts": len(prompts), "candidates": len(done) + len(todo), "generated": len(todo),
            "hit_length_limit": sum(s["unfinished"] for s in shards)}


def generate_batches(cfg: Config, round_id: int, batches: list[list[tuple[int, int]]], on_batch=None) -> dict:
    """Generate and store batches of (prompt id, k) with the round's policy; skip those already stored."""
    store = open_store(cfg)
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
        log.info("generate: batch %d/%d (%d sequences)", number, len(batches), len(batch))
        if on_batch:
            on_batch(number)
        fault_point("generate", "mid")  # some batches written, others not
    return {"unfinished": unfinished}
