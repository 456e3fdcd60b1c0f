"""Orchestration overhead of a round: its wall time minus the time spent inside compute
(generation, decoding, scoring, training, evaluation), as a fraction of the round, measured in the same run.

    .venv/bin/python benchmarks/orchestration.py [--workdir speechalign-demo] [--rounds 1]

The work directory must have been bootstrapped (`make demo` leaves one); each measured round is a
real new round of its campaign. The compute figures are the stages' own timings from the store;
everything else in the round's wall time (Prefect flow and task runs, the round lock, store reads
and writes, building pairs, MLflow logging and registration, the round's artifact) is overhead.
Process start-up (imports, Prefect's temporary server) is reported on its own line.
"""

from __future__ import annotations

import argparse
import time

started_process = time.monotonic()

from speechalign.config import load_config  # noqa: E402
from speechalign.flows.round import alignment_round  # noqa: E402
from speechalign.preference_store.store import open_store  # noqa: E402

COMPUTE = ("generate", "decode", "score", "train", "generate_heldout", "decode_heldout", "score_heldout", "evaluate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="speechalign-demo")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    cfg = load_config(workdir=args.workdir)
    store = open_store(cfg.store_url)
    if store.campaign(cfg.campaign.name) is None:
        raise SystemExit(f"{cfg.workdir} has no campaign {cfg.campaign.name!r}; run `make demo` first")
    imports = time.monotonic() - started_process
    walls, computes, others = [], [], {}
    for _ in range(args.rounds):
        t0 = time.monotonic()
        result = alignment_round(str(cfg.workdir))
        wall = time.monotonic() - t0
        rnd = [r for r in store.rounds(store.campaign(cfg.campaign.name).id) if r.number == result.round][0]
        stages = {name: st.seconds or 0.0 for name, st in store.stages(rnd.id).items()}
        compute = sum(stages[s] for s in COMPUTE)
        walls.append(wall)
        computes.append(compute)
        for name, seconds in stages.items():
            if name not in COMPUTE:
                others[name] = others.get(name, 0.0) + seconds
        print(f"round {rnd.number}: wall {wall:.1f} s; compute {compute:.1f} s ("
              + ", ".join(f"{s} {stages[s]:.1f}" for s in COMPUTE) + ")")
    wall, compute = sum(walls), sum(computes)
    overhead = wall - compute
    print(f"process start-up (imports) before the first round: {imports:.1f} s")
    print("bookkeeping stages inside the overhead: " + ", ".join(f"{k} {v:.1f} s" for k, v in others.items()))
    print(f"orchestration overhead: {overhead:.1f} s of {wall:.1f} s = {overhead / wall:.1%} of the round "
          f"(compute/wall ratio {compute / wall:.3f}; target overhead <= 10%)")


if __name__ == "__main__":
    main()
