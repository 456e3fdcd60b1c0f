"""Evaluate: the policy on held-out prompts, with the same seeds every round so rounds compare.

    samples = sample_heldout(...)     each held-out prompt: `samples_per_prompt` sampled sequences (fixed
                                      seeds, as generation samples) or one greedy sequence
    audio = decode_samples(...)       every held-out sample to a WAV
    scores = score_samples(...)       every metric of score.metrics and score.heldout_metrics

Held-out prompts never take part in pairs or training. The round's figure for a metric is the mean over
all held-out samples. The policy's teacher-forced likelihood of the golden tokens (`golden_nll`) comes with
them: it has no decoding noise, so it shows small changes between rounds that one greedy sequence per
prompt hides.
"""

from __future__ import annotations

from speechalign.config import Config
from speechalign.models.codec_lm import CodecLM, load_codec_lm
from speechalign.models.likelihood import golden_nll
from speechalign.models.sampling import Sampling, generate_units
from speechalign.preference_store.store import PreferenceStore
from speechalign.seeds import derive_seed
from speechalign.tasks.context import RoundContext
from speechalign.tasks.decode import decode_samples
from speechalign.tasks.progress import Progress
from speechalign.tasks.results import Heldout
from speechalign.tasks.score import heldout_metrics, score_samples
from speechalign.tasks.stage import stage


@stage
def evaluate(ctx: RoundContext, policy: str) -> Heldout:
    cfg, store = ctx.cfg, ctx.store
    lm = load_codec_lm(policy)
    samples = sample_heldout(cfg, store, ctx.round.id, lm)
    audio = decode_samples(cfg, store, ctx.number, samples)
    scores = score_samples(cfg, store, ctx.round.id, audio.sample_ids, heldout_metrics(cfg), policy)
    prompts = store.prompts("heldout")
    nll = golden_nll(lm, [(lm.prompt(p.text, p.speaker), p.golden_tokens[0]) for p in prompts], cfg.generate.batch_size)
    finished = [s.finished for s in store.samples(ctx.round.id, "heldout")]
    metrics = {**scores.means, "finished_rate": sum(finished) / max(1, len(finished)), "golden_nll": nll}
    return Heldout(policy=policy, prompts=len(prompts), samples=len(samples), mode=cfg.evaluate.mode,
                   metrics=metrics, decode=audio, score_failures=scores.failures)


def sample_heldout(cfg: Config, store: PreferenceStore, round_id: int, lm: CodecLM) -> tuple[int, ...]:
    """The round's held-out samples (generated now where missing); their ids."""
    prompts = store.prompts("heldout")
    if not prompts:
        raise RuntimeError("the store has no held-out prompts; set corpus.heldout_fraction > 0 and bootstrap again")
    e, g = cfg.evaluate, cfg.generate
    greedy = e.mode == "greedy"
    sampling = Sampling(not greedy, g.temperature, g.top_k, g.top_p, g.max_new_tokens)
    done = store.existing_sample_keys(round_id, "heldout")
    todo = [(p, k) for k in range(1 if greedy else e.samples_per_prompt) for p in prompts if (p.id, k) not in done]
    batches = [todo[i:i + g.batch_size] for i in range(0, len(todo), g.batch_size)]
    with Progress(f"evaluate: {len(todo)} held-out samples", len(todo), "sample") as progress:
        for batch in batches:
            # seeds depend on the prompts and the evaluation seed only, never on the round
            seed = derive_seed(e.seed, batch[0][0].id, batch[0][1])
            outputs = generate_units(lm, [lm.prompt(p.text, p.speaker) for p, _ in batch], sampling, seed)
            store.add_samples([
                {"round_id": round_id, "prompt_id": p.id, "kind": "heldout", "k": k, "tokens": out.units,
                 "finished": out.finished, "seed": seed if not greedy else None,
                 "sampling": {**sampling.as_dict(), "batch_position": i}}
                for i, ((p, k), out) in enumerate(zip(batch, outputs))
            ])
            progress.advance(len(batch))
    return tuple(s.id for s in store.samples(round_id, "heldout"))
