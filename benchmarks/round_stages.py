"""Where a demo round's time goes, stage by stage, against the round as it was before scoring went lazy.

    .venv/bin/python benchmarks/round_stages.py [--workdir speechalign-demo]

On a bootstrapped work directory (`make demo` leaves one), it runs round 1 of two new campaigns from the
same base model, in this process one after the other:
- `bench-needed`: the demo's config (score.candidates = "needed": under golden_vs_synthetic the candidates
  are neither decoded nor scored by an audio metric);
- `bench-all`: the same with score.candidates = "all": every candidate decoded and scored by every metric,
  which is what every round did before (the baseline).
Each campaign's round 0 (the base model's evaluation) runs first and is reported on its own line. For each
round: every stage's seconds and share of the round's wall time (the rest is orchestration: Prefect, the
store, MLflow), and the ratio of the two rounds' wall times.
"""

from __future__ import annotations

import argparse
import time

from speechalign.config import load_config
from speechalign.flows.round import alignment_round, baseline
from speechalign.preference_store.store import open_store

RUNS = {"bench-needed": [], "bench-all": ['score.candidates="all"']}


def run(workdir: str, name: str, extra: list[str]) -> tuple[float, dict[str, float], float]:
    overrides = [f'campaign.name="{name}"', *extra]
    cfg = load_config(workdir=workdir, overrides=overrides)
    store = open_store(cfg.store_url)
    if store.campaign(name) is not None:
        raise SystemExit(f"campaign {name} exists in {workdir}: this benchmark needs new campaigns; "
                         "use a fresh copy of the work directory")
    started = time.monotonic()
    baseline(workdir, overrides=overrides)  # round 0: the base model's evaluation
    base = time.monotonic() - started
    started = time.monotonic()
    alignment_round(workdir, overrides=overrides)
    wall = time.monotonic() - started
    rounds = {r.number: r for r in store.rounds(store.campaign(name).id)}
    return wall, {s: st.seconds or 0.0 for s, st in store.stages(rounds[1].id).items()}, base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="speechalign-demo")
    args = ap.parse_args()
    walls = {}
    for name, extra in RUNS.items():
        wall, stages, base = run(args.workdir, name, extra)
        walls[name] = wall
        print(f"\n{name} ({' '.join(extra) or 'the demo config'}): round 0 (base model evaluation) {base:.1f} s; "
              f"round 1 {wall:.1f} s")
        for stage, seconds in stages.items():
            print(f"  {stage:10s} {seconds:7.1f} s  {seconds / wall:6.1%}")
        rest = wall - sum(stages.values())
        print(f"  {'(other)':10s} {rest:7.1f} s  {rest / wall:6.1%}  Prefect, store, MLflow, the round's artifact")
    ratio = walls["bench-all"] / walls["bench-needed"]
    print(f"\nround 1 wall time: every candidate decoded and scored {walls['bench-all']:.1f} s, only what is needed "
          f"{walls['bench-needed']:.1f} s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
