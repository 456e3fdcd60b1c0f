"""An ablation (a sweep): the same campaign under several recipes, from the same base model.

A recipe is a name and the knobs it changes (`--set` overrides). Each recipe runs as its own campaign,
`<campaign.name>-<recipe>`, in the same work directory: same corpus, same base model, same round 0 seeds,
only the recipe's knobs differ. `--criteria a,b` is the recipes {a: pairs.criterion = a, b: ...}; a
recipes file (TOML, one table per recipe) names any knobs:

    [dpo-rpo]                                   # campaign <name>-dpo-rpo
    "train.loss_type" = ["sigmoid", "sft"]

    [sft-golden]                                # the control: SFT on the chosen (golden) side, same steps
    "train.loss_type" = ["sft"]

Rerunning the ablation finishes campaigns that did not complete and skips those that did. The table
(speechalign/report.py, `ablation_report`) puts each recipe's held-out figures, and their change against
the base model with its 95% interval, beside the base model's.
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import tomlkit
from prefect import flow

from speechalign.config import Config, ConfigError, evaluation_setup
from speechalign.flows.campaign import alignment_campaign
from speechalign.flows.common import ensure_campaign, load_flow_config
from speechalign.preference_store.schema import Campaign
from speechalign.preference_store.store import PreferenceStore, open_store
from speechalign.runtime.context import open_round, round_record
from speechalign.tasks.guard import stopped_by_guard
from speechalign.tasks.register import register_baseline

log = logging.getLogger(__name__)


def campaign_name(base: str, recipe: str) -> str:
    return f"{base}-{re.sub(r'[^a-z0-9]+', '-', recipe.lower()).strip('-')}"


def criteria_recipes(criteria: list[str]) -> dict[str, list[str]]:
    return {criterion: [f"pairs.criterion={criterion}"] for criterion in criteria}


def read_recipes(path: Path) -> dict[str, list[str]]:
    """A recipes file: {recipe: ["section.key=value", ...]} (values written back as TOML, as --set reads them)."""
    try:
        tables = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"recipes file {path}: {exc}") from None
    recipes = {}
    for name, knobs in tables.items():
        if not isinstance(knobs, dict) or not knobs:
            raise ConfigError(f"recipes file {path}: [{name}] must be a table of knobs, e.g. \"train.beta\" = 0.2")
        recipes[name] = [f"{key}={toml_value(value)}" for key, value in knobs.items()]
    return recipes


def toml_value(value) -> str:
    """A value as --set reads it: TOML, a table inline."""
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        table.update(value)
        return table.as_string()
    return tomlkit.item(value).as_string()


def recipe_overrides(base: str, recipe: str, knobs: list[str], overrides: list[str] | None) -> list[str]:
    return [*(overrides or []), *knobs, f"campaign.name={campaign_name(base, recipe)}"]


@flow(name="ablation")
def ablation(workdir: str, recipes: dict[str, list[str]], rounds: int, config_file: str | None = None,
             overrides: list[str] | None = None) -> list[str]:
    """Run `rounds` rounds of each recipe's campaign (those not done yet); the campaigns' names."""
    base = load_flow_config(workdir, config_file, overrides).campaign.name
    runs = [recipe_overrides(base, name, knobs, overrides) for name, knobs in recipes.items()]
    configs = [load_flow_config(workdir, config_file, extra) for extra in runs]  # each checked before any round runs
    names = []
    for extra, cfg in zip(runs, configs):
        campaign = ensure_campaign(cfg)
        store = open_store(cfg.store_url)
        share_baseline(cfg, store, campaign)
        done = sum(r.number > 0 and r.status == "completed" for r in store.rounds(campaign.id))
        if done < rounds and not stopped_by_guard(cfg, store, campaign.id):
            alignment_campaign(workdir, rounds - done, config_file, extra)
        names.append(cfg.campaign.name)
    return names


def share_baseline(cfg: Config, store: PreferenceStore, campaign: Campaign) -> None:
    """Round 0 (the base model on the held-out prompts) is the same for every campaign of this work directory
    that starts from the same base model and evaluates the same way: when another campaign (an earlier recipe,
    or the campaign the recipes are compared with) has it, it is copied (samples, scores, result), not
    evaluated again, and logged to this campaign's own MLflow run."""
    if store.round_number(campaign.id, 0) is not None:
        return
    setup = evaluation_setup(cfg.to_dict())
    for other in store.campaigns():
        source = store.round_number(other.id, 0)
        if (other.id != campaign.id and other.base_model_path == campaign.base_model_path and source is not None
                and source.status == "completed" and evaluation_setup(other.config) == setup):
            copy = round_record(store, store.copy_round(source.id, campaign.id, ("evaluate", "ceiling")))
            register_baseline(open_round(cfg, campaign, 0, campaign.base_model_path), copy.heldout, copy.ceiling)
            log.info("ablation: round 0 of %s is %s's (the same base model, evaluated the same way)", campaign.name,
                     other.name)
            return
