"""Decoding held-out samples in batches of similar length (what the decode stage does) against batches in
prompt order (what it did before), measured in the same run on the same samples.

    .venv/bin/python benchmarks/decode_order.py [--workdir speechalign-demo] [--round 1] [--repeats 3]

On a work directory `make demo` left, it takes one round's held-out and probe samples of the demo campaign,
decodes them to waveforms (acoustic stage + codec decoder, nothing written) in both orders, alternating,
`--repeats` times each, and prints the padding each order decodes, the median seconds and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

from speechalign.config import load_config
from speechalign.preference_store.store import open_store
from speechalign.tasks.decode import KINDS, decode_order, synthesizer, unit_frames


def padded_frames(lengths: list[int], batch: int) -> int:
    return sum(max(lengths[i:i + batch]) * len(lengths[i:i + batch]) for i in range(0, len(lengths), batch))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="speechalign-demo")
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = load_config(workdir=args.workdir)
    store = open_store(cfg.store_url)
    campaign = store.campaign(cfg.campaign.name)
    rnd = store.round_number(campaign.id, args.round) if campaign else None
    if rnd is None:
        raise SystemExit(f"{args.workdir} has no round {args.round} of campaign {cfg.campaign.name}: run `make demo`")
    samples = [s for s in store.samples(rnd.id) if s.kind in ("heldout", "probe")]
    speakers = {p.id: p.speaker for p in store.prompts()}
    frames = unit_frames(cfg)
    orders = {"prompt order (before)": sorted(samples, key=lambda s: (KINDS.index(s.kind), s.prompt_id, s.k)),
              "similar lengths (now)": decode_order(samples, frames)}
    synth, size = synthesizer(cfg), cfg.codec.decode_batch_size
    synth.synthesize([frames(samples[0])], [speakers[samples[0].prompt_id]])  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in orders}
    for _ in range(args.repeats):
        for name, ordered in orders.items():
            started = time.perf_counter()
            for i in range(0, len(ordered), size):
                batch = ordered[i:i + size]
                synth.synthesize([frames(s) for s in batch], [speakers[s.prompt_id] for s in batch], len(batch))
            seconds[name].append(time.perf_counter() - started)
    total = sum(len(frames(s)) for s in samples)
    print(f"{len(samples)} samples of round {args.round}, {total} frames, batches of {size}")
    for name, ordered in orders.items():
        padded = padded_frames([len(frames(s)) for s in ordered], size)
        print(f"  {name:24s} frames decoded {padded:6d} ({padded / total - 1:5.1%} padding)  "
              f"median {statistics.median(seconds[name]):6.2f} s over {args.repeats}")
    before, now = (statistics.median(v) for v in seconds.values())
    print(f"speed-up of similar-length batches over prompt order: {before / now:.2f}x")


if __name__ == "__main__":
    main()
