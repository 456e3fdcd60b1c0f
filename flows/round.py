"""One alignment round, top to bottom.

    train.method = "grpo" (the default): GRPO + LoRA on the policy's own rollouts, rewarded as they are made
    -> the new policy
    train.method = "dpo": candidates from the policy -> their audio -> their scores -> preference pairs
    -> DPO + LoRA -> the new policy
    -> its held-out samples -> their audio -> their scores -> the held-out figures and their intervals
    -> guard -> MLflow model version -> champion alias, or not

Each stage is a Prefect task (speechalign/runtime/stage.py) that takes the round's context and the results it
needs, and returns a frozen dataclass (speechalign/runtime/results.py) that the next stage takes: what you read
below is what flows. The rows themselves (samples, scores, pairs) and the files (WAVs, policies) are in the
preference store and the work directory; results carry their IDs and paths. The store records each completed
stage, so running the round again after a failure continues where it stopped.

guard flags a collapsing or regressing round; promote gives the round's model version the `champion`
alias only when no held-out metric regresses against the current champion (tasks/guard.py).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from speechalign.config import Config
from speechalign.errors import CampaignStopped
from speechalign.flows.common import ensure_campaign, load_flow_config
from speechalign.preference_store.round_lock import CampaignRoundLock
from speechalign.preference_store.schema import Campaign
from speechalign.preference_store.store import PreferenceStore, open_store
from speechalign.report import campaign_report, format_round_markdown
from speechalign.runtime.context import RoundContext, open_round
from speechalign.runtime.policies import prune_policies
from speechalign.runtime.preflight import prepare
from speechalign.tasks.decode import decode, decode_heldout
from speechalign.tasks.evaluate import ceiling, evaluate
from speechalign.tasks.generate import generate, generate_heldout
from speechalign.tasks.guard import guard, promote, stopped_by_guard
from speechalign.tasks.pairs import build_pairs
from speechalign.tasks.register import register, register_baseline
from speechalign.tasks.score import score, score_heldout
from speechalign.tasks.train import train
from speechalign.tasks.train_online import train_online

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundSummary:
    round: int
    heldout: dict[str, float]
    version: str
    guard: str  # ok | flagged
    promotion: str  # promoted | refused | off
    stop_campaign: bool


@flow(name="alignment-round")
def alignment_round(workdir: str, config_file: str | None = None, overrides: list[str] | None = None) -> RoundSummary:
    """Run the campaign's next round, or finish the last one if it did not complete.

    The campaign's round lock is held throughout: a second trigger while a round runs is refused
    (`RoundBusy`) instead of running a second round beside it.
    """
    cfg = load_flow_config(workdir, config_file, overrides)
    prepare(cfg)  # a deployment's run comes here without the CLI: reach the store and MLflow, migrate
    campaign = ensure_campaign(cfg)
    store = open_store(cfg.store_url)
    with CampaignRoundLock(store, campaign.id, campaign.name, cfg.campaign.lock_stale_seconds) as lock:
        if lock.took_over:
            log.warning("took over the round lock of campaign %s: %s", campaign.name, lock.took_over)
        base = store.round_number(campaign.id, 0)
        if base is None or base.status != "completed":
            evaluate_base_model(open_round(cfg, campaign, 0, campaign.base_model_path))
        ctx = next_round(cfg, store, campaign)
        try:
            if cfg.train.method == "grpo":
                pairs, trained = None, train_online(ctx)
            else:
                candidates = generate(ctx)
                audio = decode(ctx, candidates)
                scores = score(ctx, audio)
                pairs = build_pairs(ctx, scores)
                trained = train(ctx, pairs)
            heldout_samples = generate_heldout(ctx, trained.policy)
            heldout_audio = decode_heldout(ctx, heldout_samples)
            heldout_scores = score_heldout(ctx, heldout_audio, trained.policy)
            heldout = evaluate(ctx, trained.policy, heldout_scores)
            verdict = guard(ctx, trained, heldout, ctx.previous)
            registered = register(ctx, pairs, trained, heldout, verdict)
            promotion = promote(ctx, registered, heldout, verdict)
        except BaseException as exc:
            ctx.store.finish_round(ctx.round.id, "failed", error=f"{exc.__class__.__name__}: {exc}")
            publish_round(cfg, ctx.number)
            raise
        ctx.store.finish_round(ctx.round.id, "completed", policy_out=trained.policy)
        publish_round(cfg, ctx.number)
        prune_policies(cfg, store, campaign)
    return RoundSummary(round=ctx.number, heldout=heldout.metrics, version=registered.version,
                        guard="flagged" if verdict.flagged else "ok", promotion=promotion.verdict,
                        stop_campaign=verdict.flagged and cfg.guard.action == "stop")


def next_round(cfg: Config, store: PreferenceStore, campaign: Campaign) -> RoundContext:
    """The campaign's round that did not complete, or a new one after the last."""
    last = store.rounds(campaign.id)[-1]
    if last.status != "completed":
        log.info("resuming round %d from its last completed stage", last.number)
        return open_round(cfg, campaign, last.number, last.policy_in)
    if why := stopped_by_guard(cfg, store, campaign.id):
        raise CampaignStopped(why)
    return open_round(cfg, campaign, last.number + 1, last.policy_out)


def evaluate_base_model(ctx: RoundContext) -> None:
    """Round 0: the base model on the held-out prompts, once per campaign, so every round has a reference; and the
    ceiling no policy can beat (the recordings, and their golden tokens decoded)."""
    base = ctx.round.policy_in
    samples = generate_heldout(ctx, base)
    audio = decode_heldout(ctx, samples)
    scores = score_heldout(ctx, audio, base)
    heldout = evaluate(ctx, base, scores)
    reachable = ceiling(ctx)
    register_baseline(ctx, heldout, reachable)
    ctx.store.finish_round(ctx.round.id, "completed", policy_out=base)


@flow(name="baseline")
def baseline(workdir: str, config_file: str | None = None, overrides: list[str] | None = None) -> None:
    """Round 0 on its own (the round flow runs it first when it has not run)."""
    cfg = load_flow_config(workdir, config_file, overrides)
    campaign = ensure_campaign(cfg)
    evaluate_base_model(open_round(cfg, campaign, 0, campaign.base_model_path))


def publish_round(cfg: Config, number: int) -> None:
    """The round's status, stage timings and every round's figures as a markdown artifact in Prefect."""
    key = re.sub(r"[^a-z0-9-]+", "-", f"{cfg.campaign.name}-round-{number}".lower())
    create_markdown_artifact(markdown=format_round_markdown(campaign_report(cfg), number), key=key,
                             description=f"speechalign campaign {cfg.campaign.name}, round {number}")
