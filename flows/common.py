"""What every flow does first: read the campaign's config and find (or create) the campaign."""

from __future__ import annotations

from pathlib import Path

from speechalign.config import Config, load_config
from speechalign.errors import SetupError
from speechalign.models.codec_lm import is_saved_policy
from speechalign.models.codecs import uses_acoustic_stage
from speechalign.models.speechtokenizer.acoustic import is_saved_acoustic
from speechalign.preference_store.schema import Campaign
from speechalign.preference_store.store import open_store
from speechalign.runtime.preflight import check_names


def load_flow_config(workdir: str, config_file: str | None, overrides: list[str] | None) -> Config:
    """The campaign's config, its plug-in and criterion names checked before any work."""
    return check_names(load_config(Path(config_file) if config_file else None, overrides, workdir))


def ensure_campaign(cfg: Config) -> Campaign:
    layout = cfg.layout
    if uses_acoustic_stage(cfg.codec) and not is_saved_acoustic(layout.acoustic):
        raise SetupError(f"no acoustic stage in {layout.acoustic} (rounds decode samples with it); run "
                         f"`speechalign bootstrap --workdir {cfg.workdir}` again, which makes only what is missing, "
                         "or --set codec.acoustic=layer1_only")
    store = open_store(cfg.store_url)
    campaign = store.campaign(cfg.campaign.name)
    if campaign is not None:
        return campaign
    if not is_saved_policy(layout.base_model):
        raise SetupError(f"no base model in {layout.base_model}; run `speechalign bootstrap --workdir {cfg.workdir}` "
                         "(or `speechalign demo`) before running rounds")
    return store.create_campaign(cfg.campaign.name, cfg.to_dict(), str(layout.base_model))
