"""MLflow layout of a campaign: one experiment, a parent run for the campaign, a nested run per round.

Runs are found again by their tags before any is created, so a resumed stage never makes a
second run for the same campaign or round.
"""

from __future__ import annotations

from typing import NamedTuple

import mlflow
from mlflow.tracking import MlflowClient

from speechalign.config import Config
from speechalign.preference_store.schema import Campaign, Round
from speechalign.preference_store.store import PreferenceStore

CAMPAIGN_TAG, ROUND_TAG = "speechalign.campaign", "speechalign.round"


def client(cfg: Config) -> MlflowClient:
    mlflow.set_tracking_uri(cfg.tracking_uri)
    return MlflowClient(cfg.tracking_uri)


# The MLflow UI opens an experiment by its kind: model training (runs, charts, models), not GenAI traces.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


UI_PORT = 5000


def ui_link(cfg: Config, experiment: str | None, port: int = UI_PORT) -> tuple[str, str]:
    """The command that serves the MLflow UI for the work directory, and the address that opens the campaign's
    experiment on its runs. MLflow 3's UI starts a new browser on its GenAI view, whatever the experiment's kind;
    `workflowType=machine_learning` opens the runs (the campaign's run and its nested rounds)."""
    command = f"mlflow ui --backend-store-uri {cfg.tracking_uri} --port {port}"
    where = f"experiments/{experiment}" if experiment else "experiments"
    return command, f"http://127.0.0.1:{port}/#/{where}?workflowType=machine_learning"


def experiment_id(cfg: Config, c: MlflowClient) -> str:
    name = f"speechalign-{cfg.campaign.name}"
    exp = c.get_experiment_by_name(name)
    if exp is None:
        return c.create_experiment(name, artifact_location=cfg.artifact_location,
                                   tags={CAMPAIGN_TAG: cfg.campaign.name, EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    return exp.experiment_id


def _find_or_create_run(c: MlflowClient, exp_id: str, tags: dict[str, str], run_name: str) -> str:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items() if k.startswith("speechalign."))
    found = c.search_runs([exp_id], filter_string=query, max_results=1)
    if found:
        return found[0].info.run_id
    return c.create_run(exp_id, tags={**tags, "mlflow.runName": run_name}).info.run_id


class RoundRun(NamedTuple):
    client: MlflowClient
    experiment_id: str
    parent_run_id: str  # the campaign's run
    run_id: str  # the round's run (round 0: the campaign's)


def campaign_run(cfg: Config, store: PreferenceStore, campaign: Campaign) -> RoundRun:
    """The campaign's run, created on first use (the store's row is read afresh: an earlier stage may have
    made the run since the caller read it)."""
    c = client(cfg)
    campaign = store.campaign(campaign.name) or campaign
    exp_id = experiment_id(cfg, c)
    run_id = campaign.mlflow_parent_run_id or _find_or_create_run(
        c, exp_id, {CAMPAIGN_TAG: campaign.name, ROUND_TAG: "campaign"}, campaign.name)
    if campaign.mlflow_parent_run_id != run_id:
        c.log_text(run_id, cfg.to_toml(), "config.toml")
        store.set_campaign_mlflow(campaign.id, exp_id, run_id)
    return RoundRun(c, exp_id, run_id, run_id)


def round_run(cfg: Config, store: PreferenceStore, campaign: Campaign, rnd: Round) -> RoundRun:
    """The round's run, nested under the campaign's."""
    c, exp_id, parent, _ = campaign_run(cfg, store, campaign)
    rnd = store.round(rnd.id)
    run_id = rnd.mlflow_run_id or _find_or_create_run(
        c, exp_id, {CAMPAIGN_TAG: campaign.name, ROUND_TAG: str(rnd.number), "mlflow.parentRunId": parent},
        f"round-{rnd.number}")
    if rnd.mlflow_run_id != run_id:
        store.set_round_mlflow_run(rnd.id, run_id)
    return RoundRun(c, exp_id, parent, run_id)
