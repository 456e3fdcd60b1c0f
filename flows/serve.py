"""A campaign's rounds as a Prefect deployment: on a schedule, and by hand from Prefect.

`speechalign serve --cron "0 3 * * *" --workdir W` serves the `alignment-round` flow as the
deployment `alignment-round/<campaign>` from this process (`flow.serve`); `prefect deployment run
alignment-round/<campaign>` (or the UI's Run button) triggers one round by hand. The deployment
allows one run at a time and queues the next (ENQUEUE), and the store's round lock refuses a
round started any other way while one runs. Teams that run workers use `prefect.yaml` instead.
"""

from __future__ import annotations

from pathlib import Path

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType

from speechalign.config import Config
from speechalign.flows.round import alignment_round


def deployment_name(cfg: Config) -> str:
    return cfg.campaign.name


def serve_rounds(cfg: Config, cron: str | None, config_file: str | None, overrides: list[str]) -> None:
    """Serve the round flow until interrupted (Ctrl-C or SIGTERM)."""
    alignment_round.serve(
        name=deployment_name(cfg),
        cron=cron,
        parameters={"workdir": str(cfg.workdir), "overrides": overrides,
                    "config_file": str(Path(config_file).resolve()) if config_file else None},
        global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        tags=["speechalign", f"campaign:{cfg.campaign.name}"],
        description=f"One alignment round of campaign {cfg.campaign.name} (work directory {cfg.workdir})",
        entrypoint_type=EntrypointType.MODULE_PATH,
        pause_on_shutdown=False,
    )
