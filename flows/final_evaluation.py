"""An ablation's final evaluation: every recipe's last policy, and the base model, on a test split of several hundred
prompts, so recipes whose difference is a few hundredths can be told apart.

    test split ─► each policy's samples (kind "test", the evaluation's seeds: the same draws for every policy)
    ─► decoded ─► scored by the held-out plug-ins ─► per prompt figures, paired across policies

A round's own evaluation stays as cheap as it is (100 held-out prompts); this one runs once, after the last round,
through the same generation, decoding and scoring code. The test split never takes part in anything else: no
pairs, no training, no acoustic stage. For the demo corpus, its sentences are the ones the demo's grammar gives
after the corpus's, spoken the same way (`build_demo_corpus`); for your corpus, give a manifest of recordings
that are in no other split. Each policy's samples are stored in its round (round 0 of the first campaign for the
base model), and a rerun makes only what is missing.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from prefect import flow

from speechalign.bootstrap.demo_corpus import build_demo_corpus
from speechalign.bootstrap.import_corpus import import_corpus
from speechalign.config import Config, ConfigError
from speechalign.flows.common import load_flow_config
from speechalign.models.codecs import open_codec
from speechalign.preference_store.schema import Prompt
from speechalign.preference_store.store import PreferenceStore, open_store
from speechalign.runtime.context import RoundContext, open_round
from speechalign.tasks.decode import decode_samples
from speechalign.tasks.evaluate import prompt_figures
from speechalign.tasks.generate import candidate_sampling, generate_samples
from speechalign.tasks.score import heldout_metrics, score_samples

log = logging.getLogger(__name__)
KIND = "test"


@flow(name="final-evaluation")
def final_evaluation(workdir: str, campaigns: dict[str, list[str]], prompts: int, manifest: str | None = None,
                     config_file: str | None = None) -> dict[str, dict[str, dict[int, float]]]:
    """{"base model" or a campaign: per-figure, per-prompt values} on the first `prompts` test prompts.
    `campaigns`: {campaign name: its --set overrides} (each evaluated with its own config)."""
    configs = {name: load_flow_config(workdir, config_file, extra) for name, extra in campaigns.items()}
    first = next(iter(configs.values()))
    store = open_store(first.store_url)
    test = test_prompts(first, store, prompts, manifest)
    out = {}
    for name, cfg in configs.items():
        campaign = store.campaign(name)
        rounds = [r for r in store.rounds(campaign.id) if r.status == "completed"] if campaign else []
        if not rounds:
            raise ConfigError(f"final evaluation: campaign {name} has no completed round; run its rounds first")
        if "base model" not in out:
            base = open_round(cfg, campaign, 0, campaign.base_model_path)
            out["base model"] = evaluate_on_test(base, campaign.base_model_path, test)
        last = rounds[-1]
        if last.number > 0:
            out[name] = evaluate_on_test(open_round(cfg, campaign, last.number, last.policy_in), last.policy_out, test)
    return out


def test_prompts(cfg: Config, store: PreferenceStore, count: int, manifest: str | None) -> list[Prompt]:
    """The first `count` prompts of the test split, imported now where the store has fewer: from `manifest`, or for
    the demo corpus, new sentences of its grammar."""
    have = store.prompts(KIND)
    if len(have) < count:
        if manifest is None and cfg.corpus.manifest:
            raise ConfigError(f"the final evaluation needs {count} test prompts and the store has {len(have)}; give a "
                              "manifest of recordings in no other split (--final-manifest)")
        if manifest is None:
            d = cfg.demo
            manifest = str(build_demo_corpus(cfg.layout.corpus / "test", count, d.voices, d.seed, d.speed,
                                             after=d.utterances, prefix="demo-test"))
        c = cfg.corpus
        import_corpus(store, open_codec(cfg, acoustic=False), Path(manifest), c.min_seconds, c.max_seconds, 0.0,
                      c.split_seed, cfg.layout.repaired_audio, cfg.codec.encode_batch_size, split=KIND)
        have = store.prompts(KIND)
    if len(have) < count:
        raise ConfigError(f"the final evaluation asked for {count} test prompts; {manifest} gave {len(have)}")
    return sorted(have, key=lambda p: p.id)[:count]


def evaluate_on_test(ctx: RoundContext, policy: str, prompts: list[Prompt]) -> dict[str, dict[int, float]]:
    """`policy`'s figures per prompt on the test prompts: sampled (or greedy) as evaluate.mode says, decoded and
    scored as held-out samples are."""
    cfg, store = ctx.cfg, ctx.store
    e = cfg.evaluate
    greedy = e.mode == "greedy"
    todo = [(p.id, k) for k in range(1 if greedy else e.samples_per_prompt) for p in prompts]
    sampling = dataclasses.replace(candidate_sampling(cfg), do_sample=not greedy)
    log.info("final evaluation: %s on %d test prompts", policy, len(prompts))
    generate_samples(cfg, store, ctx, KIND, todo, policy, sampling, seed=(e.seed, KIND))
    wanted = {p.id for p in prompts}
    ids = tuple(s.id for s in store.samples(ctx.round.id, KIND) if s.prompt_id in wanted)
    decode_samples(cfg, store, ctx.number, ids, "final")
    score_samples(cfg, store, ctx.round.id, ids, heldout_metrics(cfg), policy)
    figures = prompt_figures(store, ctx.round.id, KIND)
    return {m: {p: v for p, v in by_prompt.items() if p in wanted} for m, by_prompt in figures.items()}
