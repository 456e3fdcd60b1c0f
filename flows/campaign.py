"""A campaign: N alignment rounds, each starting from the policy the round before produced.

Rerunning a campaign after a failure first finishes the interrupted round (it counts as one of
the N), then goes on.
"""

from __future__ import annotations

from prefect import flow

from speechalign.flows.round import alignment_round


@flow(name="alignment-campaign")
def alignment_campaign(workdir: str, rounds: int, config_file: str | None = None,
                       overrides: list[str] | None = None) -> list[dict]:
    return [alignment_round(workdir, config_file, overrides) for _ in range(rounds)]
