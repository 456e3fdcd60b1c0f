"""Ship a bootstrapped work directory's acoustic stage and base model as the demo's own (bootstrap/shipped.py).

    SPEECHALIGN_NO_SHIPPED=1 .venv/bin/speechalign bootstrap --workdir /tmp/ship   # trains both here
    .venv/bin/python scripts/ship_demo_models.py --workdir /tmp/ship

Each model is copied into the package (models/demo_codec/acoustic/, models/demo_lm/) with the fingerprint
of the work directory's recipe, so that a later bootstrap of the same recipe (the demo's defaults) copies
it instead of training it again. Run it after any change to the demo corpus, the codec, the [model] or
acoustic settings, or to what training makes from them (then raise bootstrap/shipped.py's VERSION first).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from speechalign.bootstrap.acoustic_stage import SHIPPED_STAGE, stage_config, stage_fingerprint, training_prompts
from speechalign.config import load_config
from speechalign.models.codec_lm import METADATA_FILE
from speechalign.models.speechtokenizer.acoustic import CONFIG_NAME
from speechalign.preference_store.store import open_store


def stamp(src: Path, dst: Path, metadata_file: str, key_path: list[str], fingerprint: str) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    meta = json.loads((dst / metadata_file).read_text())
    node = meta
    for key in key_path:
        node = node.setdefault(key, {})
    node["fingerprint"] = fingerprint
    (dst / metadata_file).write_text(json.dumps(meta, indent=1))
    print(f"shipped {src} -> {dst} (recipe {fingerprint[:12]})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    cfg = load_config(workdir=args.workdir)
    if cfg.corpus.manifest or cfg.codec.config_path or cfg.model.base_model:
        raise SystemExit("only the demo's own recipe ships: the demo corpus, the demo codec and the demo model")
    from speechalign.flows.bootstrap import SHIPPED_BASE, base_model_fingerprint, sft_prompts  # noqa: PLC0415

    store = open_store(cfg.store_url)
    train = training_prompts(store)
    stamp(cfg.layout.acoustic, SHIPPED_STAGE, CONFIG_NAME, ["training"],
          stage_fingerprint(cfg, stage_config(cfg, train), train))
    stamp(cfg.layout.base_model, SHIPPED_BASE, METADATA_FILE, [], base_model_fingerprint(cfg, sft_prompts(store)))


if __name__ == "__main__":
    main()
