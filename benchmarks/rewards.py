"""What an online round's reward costs: a batch of rollouts decoded once and scored once by every plug-in the reward
weighs (tasks/train_online.py's RolloutScorer), against decoding the batch again for each weighted value, as a
reward function per value would do on its own; measured in the same run on the same rollouts.

    .venv/bin/python benchmarks/rewards.py --workdir speechalign-demo [--rollouts 32] [--campaign demo] \
        [--set 'reward.weights={asr_cer = 1.0, speaker_similarity = 0.5, dnsmos_ovrl = 0.5, unit_edit_distance = 1.0}']

The rollouts are sampled from the work directory's base model for its train prompts, as a GRPO step samples them
(generate's sampling, only units), and recorded in a campaign of the benchmark's own, `bench-rewards`. Prints each
path's seconds, the ratio, and, with --campaign naming an online
campaign of the store, where its rounds' step time went: the reward (decode + plug-ins) against the whole step
(TRL's step_time: generation, reward, the update).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from speechalign.config import load_config
from speechalign.flows.common import ensure_campaign
from speechalign.models.codec_lm import load_codec_lm
from speechalign.models.codecs import codec_flattening, golden_units
from speechalign.models.metrics import ScoreItem, get_metric, plugins_for
from speechalign.models.sampling import generate_units
from speechalign.preference_store.store import open_store
from speechalign.rewards import Reward
from speechalign.runtime.context import open_round, round_record
from speechalign.tasks.decode import WavJob, synthesizer, write_wavs
from speechalign.tasks.generate import candidate_sampling
from speechalign.tasks.score import score_items
from speechalign.tasks.train_online import RolloutScorer


def per_value(cfg, lm, prompts, rows, reward: Reward, folder: Path) -> float:
    """The batch decoded again for each weighted value, then that value's plug-in on it: seconds."""
    started = time.monotonic()
    synth = synthesizer(cfg)
    for value in reward.values:
        jobs = [WavJob(units, p.speaker, folder / f"{value}-{i}.wav", str(i))
                for i, (p, (units, _)) in enumerate(zip(prompts, rows))]
        write_wavs(synth, jobs, cfg.codec.decode_batch_size)
        metric = get_metric(plugins_for([value])[0], cfg.score)
        flattening = codec_flattening(cfg.codec)
        items = [ScoreItem(units, golden_units(p.golden_tokens, flattening), p.text, str(j.path), p.golden_audio_path,
                           p.speaker)
                 for p, (units, _), j in zip(prompts, rows, jobs)]
        score_items(metric, items, [j.label for j in jobs])
    return time.monotonic() - started


def step_shares(cfg, store, name: str) -> None:
    campaign = store.campaign(name)
    if campaign is None:
        raise SystemExit(f"no campaign {name} in {cfg.workdir}")
    for rnd in store.rounds(campaign.id):
        trained = round_record(store, rnd).trained
        if trained is None or trained.method != "grpo":
            continue
        steps = [h for h in trained.history if "step_time" in h and "online/reward_s" in h]
        step, reward = (statistics.fmean(h[k] for h in steps) for k in ("step_time", "online/reward_s"))
        decode = statistics.fmean(h["online/decode_s"] for h in steps)
        print(f"{name} round {rnd.number}: {len(steps)} steps, {step:.1f} s a step; the reward {reward:.1f} s "
              f"({reward / step:.0%}: decode {decode:.1f} s, plug-ins {reward - decode:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="speechalign-demo")
    ap.add_argument("--rollouts", type=int, default=32)
    ap.add_argument("--campaign", help="an online campaign of the work directory: its steps' time shares")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE",
                    help="a config knob, e.g. the reward's weights (the default reward reads units alone: no decoding)")
    args = ap.parse_args()
    cfg = load_config(workdir=args.workdir, overrides=args.overrides)
    store = open_store(cfg.store_url)
    if args.campaign:
        step_shares(cfg, store, args.campaign)
    bench = load_config(workdir=args.workdir, overrides=[*args.overrides, 'campaign.name="bench-rewards"'])
    campaign = ensure_campaign(bench)  # the scorer records its rollouts: in a campaign of the benchmark's own
    lm = load_codec_lm(campaign.base_model_path)
    prompts = (store.prompts("train") * args.rollouts)[:args.rollouts]
    outputs = generate_units(lm, [lm.prompt(p.text, p.speaker) for p in prompts], candidate_sampling(cfg),
                             list(range(len(prompts))))
    rows = [(o.units, True) for o in outputs]  # every rollout heard: both paths decode and score all of them
    reward = Reward.from_config(cfg.reward.model_copy(update={"min_length_ratio": 0.0}))
    with tempfile.TemporaryDirectory() as tmp:
        ctx = open_round(bench, campaign, 1, campaign.base_model_path)
        store.delete_samples(ctx.round.id, "rollout")  # a rerun scores again
        scorer = RolloutScorer(cfg, ctx, lm, {p.id: p for p in prompts}, reward, len(prompts))
        ids = [[*(lm.unit_ids()[u] for u in units), lm.eosp_id] for units, _ in rows]
        per_value(cfg, lm, prompts[:2], rows[:2], reward, Path(tmp))  # warm-up: the plug-ins' models load
        started = time.monotonic()
        for value in reward.values:  # TRL calls one reward function per value; the first does the work
            scorer.component(value)(prompts=[], completions=[], completion_ids=ids, prompt_id=[p.id for p in prompts],
                                    trainer_state=SimpleNamespace(global_step=0))
        shared = time.monotonic() - started
        again = per_value(cfg, lm, prompts, rows, reward, Path(tmp))
    print(f"{len(rows)} rollouts, reward {reward.weights}: decoded once and scored once {shared:.1f} s; decoded again "
          f"for each of the {len(reward.values)} values {again:.1f} s: {again / shared:.2f}x")


if __name__ == "__main__":
    main()
