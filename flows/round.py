"""One alignment round, top to bottom.

    generate -> decode -> score -> pairs -> train -> evaluate -> guard -> register -> promote

guard flags a collapsing or regressing round; promote gives the round's model version the `champion`
alias only when no held-out metric regresses against the current champion (tasks/guard.py).

Each stage is a Prefect task with retries over IDs and paths (never tensors): it reads its inputs
from the preference store and the work directory and writes its outputs there. The store records
each completed stage, so running the round again after a failure continues where it stopped.
"""

from __future__ import annotations

import re

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from speechalign.config import Config
from speechalign.flows.common import ensure_campaign, load_flow_config
from speechalign.preference_store.round_lock import CampaignRoundLock
from speechalign.preflight import prepare
from speechalign.report import campaign_report, format_markdown
from speechalign.tasks.decode import decode_samples
from speechalign.tasks.evaluate import evaluate_policy
from speechalign.tasks.generate import generate_candidates
from speechalign.tasks.guard import guard_round, promote_round, stopped_by_guard
from speechalign.tasks.pairs import build_pairs
from speechalign.tasks.register import log_baseline, register_round
from speechalign.tasks.score import score_samples
from speechalign.tasks.stage import log, open_store, run_stage
from speechalign.tasks.train import train_policy


@task(cache_policy=NO_CACHE)
def stage(cfg: Config, round_id: int, name: str, work, *args) -> dict:
    return run_stage(cfg, round_id, name, work, *args)


def stage_task(cfg: Config, name: str):
    return stage.with_options(name=name, task_run_name=name, retries=cfg.prefect.task_retries,
                              retry_delay_seconds=cfg.prefect.retry_delay_seconds)


def publish_round(cfg: Config, number: int) -> None:
    """The round's status, stage timings and every round's figures as a markdown artifact in Prefect."""
    key = re.sub(r"[^a-z0-9-]+", "-", f"{cfg.campaign.name}-round-{number}".lower())
    create_markdown_artifact(markdown=format_markdown(campaign_report(cfg), number), key=key,
                             description=f"speechalign campaign {cfg.campaign.name}, round {number}")


@flow(name="baseline")
def baseline(workdir: str, config_file: str | None = None, overrides: list[str] | None = None) -> dict:
    """Round 0: the base model on the held-out prompts, once per campaign, so every round has a reference."""
    cfg = load_flow_config(workdir, config_file, overrides)
    store = open_store(cfg)
    campaign = ensure_campaign(cfg)
    rnd = store.open_round(campaign.id, 0, campaign.base_model_path)
    result = stage_task(cfg, "evaluate")(cfg, rnd.id, "evaluate", evaluate_policy, campaign.base_model_path)
    stage_task(cfg, "register")(cfg, rnd.id, "register", log_baseline)
    store.finish_round(rnd.id, "completed", policy_out=campaign.base_model_path)
    return result


@flow(name="alignment-round")
def alignment_round(workdir: str, config_file: str | None = None, overrides: list[str] | None = None) -> dict:
    """Run the campaign's next round, or finish the last one if it did not complete.

    The campaign's round lock is held throughout: a second trigger while a round runs is refused
    (`RoundBusy`) instead of running a second round beside it.
    """
    cfg = load_flow_config(workdir, config_file, overrides)
    prepare(cfg)  # a deployment's run comes here without the CLI: reach the store and MLflow, migrate
    store = open_store(cfg)
    campaign = ensure_campaign(cfg)
    with CampaignRoundLock(store, campaign.id, campaign.name, cfg.campaign.lock_stale_seconds) as lock:
        if lock.took_over:
            log.warning("took over the round lock of campaign %s: %s", campaign.name, lock.took_over)
        return _run_round(cfg, store, campaign, workdir, config_file, overrides)


def _run_round(cfg: Config, store, campaign, workdir: str, config_file: str | None,
               overrides: list[str] | None) -> dict:
    if not any(r.number == 0 and r.status == "completed" for r in store.rounds(campaign.id)):
        baseline(workdir, config_file, overrides)
    rounds = store.rounds(campaign.id)
    last = rounds[-1]
    if last.status == "completed" and (why := stopped_by_guard(cfg, campaign.id)):
        raise CampaignStopped(why)
    if last.status == "completed":
        rnd = store.open_round(campaign.id, last.number + 1, last.policy_out)
    else:
        rnd = store.open_round(campaign.id, last.number, last.policy_in)
        log.info("resuming round %d from its last completed stage", rnd.number)
    try:
        stage_task(cfg, "generate")(cfg, rnd.id, "generate", generate_candidates)
        stage_task(cfg, "decode")(cfg, rnd.id, "decode", decode_samples)
        stage_task(cfg, "score")(cfg, rnd.id, "score", score_samples, ("golden", "candidate"))
        stage_task(cfg, "pairs")(cfg, rnd.id, "pairs", build_pairs)
        trained = stage_task(cfg, "train")(cfg, rnd.id, "train", train_policy)
        evaluated = stage_task(cfg, "evaluate")(cfg, rnd.id, "evaluate", evaluate_policy, trained["policy"])
        guard = stage_task(cfg, "guard")(cfg, rnd.id, "guard", guard_round)
        registered = stage_task(cfg, "register")(cfg, rnd.id, "register", register_round)
        promoted = stage_task(cfg, "promote")(cfg, rnd.id, "promote", promote_round)
    except BaseException as exc:
        store.finish_round(rnd.id, "failed", error=f"{exc.__class__.__name__}: {exc}")
        publish_round(cfg, rnd.number)
        raise
    store.finish_round(rnd.id, "completed", policy_out=trained["policy"])
    publish_round(cfg, rnd.number)
    stop = guard["flagged"] and cfg.guard.action == "stop"
    return {"round": rnd.number, **{k: v for k, v in evaluated.items() if k.startswith("heldout/")},
            "version": registered["version"], "guard": "flagged" if guard["flagged"] else "ok",
            "promotion": promoted["verdict"], "stop_campaign": stop}


class CampaignStopped(RuntimeError):
    """The collapse guard (guard.action = "stop") stopped the campaign; the message says why and how to go on."""
