"""Train the acoustic stage (models/speechtokenizer/acoustic.py) on a machine with a GPU: how the shipped one is made.

    # here, on a bootstrapped demo work directory: the golden layer-1 units and latents and the recipe's fingerprint
    .venv/bin/python scripts/train_acoustic.py export --workdir speechalign-demo --out acoustic-data.npz
    # on the GPU machine (torch, numpy and safetensors are all it needs)
    python scripts/train_acoustic.py train --data acoustic-data.npz --out acoustic --device cuda
    # here: check it on held-out golden tokens, then ship it
    cp -r acoustic models/demo_codec/acoustic

The recipe (codec, golden tokens, [codec] acoustic_steps/acoustic_dim/acoustic_layers, seed) is fixed at export;
`train` reproduces bootstrap/acoustic_stage.py's training on whatever device it is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def export(args) -> None:
    from speechalign.bootstrap.acoustic_stage import stage_config, stage_fingerprint, training_prompts
    from speechalign.config import load_config
    from speechalign.models.speechtokenizer.codec import load_codec
    from speechalign.models.speechtokenizer.synthesizer import Synthesizer
    from speechalign.preference_store.store import open_store

    cfg = load_config(workdir=args.workdir, overrides=args.overrides)
    store = open_store(cfg.store_url)
    train, heldout = training_prompts(store), store.prompts("heldout")
    config = stage_config(cfg, train)
    latents = Synthesizer(load_codec(*cfg.codec.files()), None).code_latents
    arrays = {}
    for split, prompts in (("train", train), ("heldout", heldout)):
        arrays |= {f"{split}_units_{i}": np.asarray(p.golden_tokens[0], np.int16) for i, p in enumerate(prompts)}
        arrays |= {f"{split}_latent_{i}": z for i, z in
                   enumerate(latents([np.asarray(p.golden_tokens) for p in prompts]))}
    recipe = {"config": config.__dict__, "steps": cfg.codec.acoustic_steps, "seed": cfg.model.seed,
              "fingerprint": stage_fingerprint(cfg, config, train),
              "train_speakers": [p.speaker for p in train], "heldout_speakers": [p.speaker for p in heldout]}
    np.savez_compressed(args.out, recipe=json.dumps(recipe), **arrays)
    print(f"{len(train)} train and {len(heldout)} held-out utterances, {recipe['steps']} steps: {args.out}")


def train(args) -> None:
    sys.path.insert(0, str(REPO / "models"))  # acoustic.py alone: no speechalign install needed
    from acoustic import AcousticConfig, latent_error, train_acoustic

    data = np.load(args.data)
    recipe = json.loads(str(data["recipe"]))

    def arrays(prefix: str) -> list[np.ndarray]:
        return [data[k] for k in sorted((k for k in data if k.startswith(prefix)), key=lambda k: int(k.split("_")[-1]))]

    config = AcousticConfig(**recipe["config"])
    model, report = train_acoustic([u.astype(np.int64) for u in arrays("train_units_")], arrays("train_latent_"),
                                   recipe["train_speakers"], config, recipe["steps"], recipe["seed"],
                                   batch_size=args.batch, device=args.device, log=print)
    predicted = model.predict([u.tolist() for u in arrays("heldout_units_")], recipe["heldout_speakers"])
    report.update(heldout_latent_error=round(latent_error(predicted, arrays("heldout_latent_")), 4),
                  fingerprint=recipe["fingerprint"], device=args.device, batch_size=args.batch)
    model.save(Path(args.out), report)
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p = sub.add_parser("train")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    export(args) if args.command == "export" else train(args)


if __name__ == "__main__":
    main()
