"""A campaign: N alignment rounds, each starting from the policy the round before produced.

Rerunning a campaign after a failure first finishes the interrupted round (it counts as one of
the N), then goes on. A round the collapse guard flags with guard.action = "stop" ends the campaign.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from speechalign.flows.round import RoundSummary, alignment_round


@flow(name="alignment-campaign")
def alignment_campaign(workdir: str, rounds: int, config_file: str | None = None,
                       overrides: list[str] | None = None) -> list[RoundSummary]:
    results = []
    for _ in range(rounds):
        results.append(alignment_round(workdir, config_file, overrides))
        if results[-1].stop_campaign:
            get_run_logger().warning("the collapse guard stopped the campaign after round %d", results[-1].round)
            break
    return results
