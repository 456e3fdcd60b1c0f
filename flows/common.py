"""What every flow does first: read the campaign's config and find (or create) the campaign."""

from __future__ import annotations

from pathlib import Path

from speechalign.config import Config, load_config
from speechalign.models.acoustic import is_saved_acoustic
from speechalign.models.codec_lm import is_saved_policy
from speechalign.preference_store.schema import Campaign
from speechalign.tasks.decode import acoustic_dir
from speechalign.tasks.stage import open_store

BASE_MODEL_DIR = "models/base"


class SetupError(RuntimeError):
    """Something a command needs is not there yet; the message says which command makes it."""


def load_flow_config(workdir: str, config_file: str | None, overrides: list[str] | None) -> Config:
    return load_config(Path(config_file) if config_file else None, overrides, workdir)


def base_model_dir(cfg: Config) -> Path:
    return cfg.workdir / BASE_MODEL_DIR


def ensure_campaign(cfg: Config) -> Campaign:
    if cfg.codec.acoustic == "model" and not is_saved_acoustic(acoustic_dir(cfg)):
        raise SetupError(f"no acoustic stage in {acoustic_dir(cfg)} (rounds decode samples with it); run "
                         f"`speechalign bootstrap --workdir {cfg.workdir}` again, which trains only what is missing, "
                         "or --set codec.acoustic=layer1_only")
    store = open_store(cfg)
    campaign = store.campaign(cfg.campaign.name)
    if campaign is not None:
        return campaign
    base = base_model_dir(cfg)
    if not is_saved_policy(base):
        raise SetupError(f"no base model in {base}; run `speechalign bootstrap --workdir {cfg.workdir}` "
                           "(or `speechalign demo`) before running rounds")
    return store.create_campaign(cfg.campaign.name, cfg.to_dict(), str(base))
