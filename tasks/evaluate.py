"""Evaluate: the policy on held-out prompts, with the same seeds every round so rounds compare.

Held-out prompts never take part in pairs or training. Each gets `samples_per_prompt` sequences
(sampled with fixed seeds, as generation samples) or one greedy sequence; the same metrics as the
candidates score them, and the round's figure is the mean over all held-out samples. The policy's
teacher-forced likelihood of the golden tokens (`heldout/golden_nll`) comes with them: it has no
decoding noise, so it shows small changes between rounds that one greedy sequence per prompt hides. Every
held-out sample is decoded to a WAV (tasks/decode.py) before it is scored.
"""

from __future__ import annotations

from speechalign.config import Config
from speechalign.models.codec_lm import load_codec_lm
from speechalign.models.likelihood import golden_nll
from speechalign.models.sampling import Sampling, generate_units
from speechalign.tasks.decode import decode_samples
from speechalign.tasks.score import score_samples
from speechalign.tasks.stage import derive_seed, open_store


def evaluate_policy(cfg: Config, round_id: int, policy: str) -> dict:
    store = open_store(cfg)
    prompts = store.prompts("heldout")
    if not prompts:
        raise RuntimeError("the store has no held-out prompts; set corpus.heldout_fraction > 0 and bootstrap again")
    e, g = cfg.evaluate, cfg.generate
    greedy = e.mode == "greedy"
    per_prompt = 1 if greedy else e.samples_per_prompt
    sampling = Sampling(not greedy, g.temperature, g.top_k, g.top_p, g.max_new_tokens)
    done = store.existing_sample_keys(round_id, "heldout")
    todo = [(p, k) for k in range(per_prompt) for p in prompts if (p.id, k) not in done]
    lm = load_codec_lm(policy)
    nll = golden_nll(lm, [(lm.prompt(p.text, p.speaker), p.golden_tokens[0]) for p in prompts], g.batch_size)
    if todo:
        for start in range(0, len(todo), g.batch_size):
            batch = todo[start:start + g.batch_size]
            # seeds depend on the prompts and the evaluation seed only, never on the round
            seed = derive_seed(e.seed, batch[0][0].id, batch[0][1])
            outputs = generate_units(lm, [lm.prompt(p.text, p.speaker) for p, _ in batch], sampling, seed)
            store.add_samples([
                {"round_id": round_id, "prompt_id": p.id, "kind": "heldout", "k": k, "tokens": out.units,
                 "finished": out.finished, "seed": seed if not greedy else None,
                 "sampling": {**sampling.as_dict(), "batch_position": i}}
                for i, ((p, k), out) in enumerate(zip(batch, outputs))
            ])
    decoded = decode_samples(cfg, round_id, ("heldout",))
    result = score_samples(cfg, round_id, ("heldout",), policy)
    samples = store.samples(round_id, "heldout")
    heldout = {f"heldout/{k.removeprefix('mean/')}": v for k, v in result.items() if k.startswith("mean/")}
    heldout["heldout/finished_rate"] = sum(s.finished for s in samples) / max(1, len(samples))
    heldout["heldout/golden_nll"] = nll
    return {"prompts": len(prompts), "samples": len(samples), "mode": e.mode, "policy": policy,
            "decode": decoded, "score_failures": result["failures"], **heldout}
