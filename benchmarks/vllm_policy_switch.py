"""How the vLLM server should move to a round's new policy: restarted on its merged weights, or kept on the base model
with the round's adapters loaded as one LoRA (generate.vllm_policy_switch), measured in one run with the product's
own server start (`speechalign vllm-serve`'s Supervisor) and generator (models/vllm_backend.py).

    .venv/bin/python benchmarks/vllm_policy_switch.py [--workdir W --round N] [--sequences 488] [--ranks 16,64]

A round switches once: its candidates come from the policy its held-out samples came from a round before, and its
held-out samples from the new one. So a round's generation costs one switch plus its sequences at the rate the
server runs that policy: with restart, the server's start on the merged weights, then the plain model's rate; with
lora, the stacked adapter written and loaded plus the first request, then the rate with a LoRA computed at
--max-lora-rank (vLLM pads every adapter to it). --sequences defaults to a demo round's: 128 prompts x 2 candidates,
100 held-out prompts x 2 and 16 probe prompts x 2.

With --workdir W --round N: that round's merged policy (rebuilt from the adapters if it was pruned) and the campaign's
base model with adapters 1..N. Without: the shipped demo model and N (--round, default 3) adapters of the demo's
rank (train.lora_r, all-linear) with random weights, made here: the same shapes, so the same cost.
Needs the vLLM environment (scripts/install.sh .venv-vllm vllm).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from speechalign.bootstrap.demo_corpus import demo_sentences
from speechalign.config import Config, load_config
from speechalign.models.codec_lm import METADATA_FILE
from speechalign.models.sampling import Sampling
from speechalign.models.vllm_backend import VllmServer
from speechalign.runtime.vllm_server import Supervisor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_rounds(work: Path, rounds: int, cfg: Config) -> tuple[str, list[str], str]:
    """The shipped demo model and `rounds` adapters with random weights, merged one after the other."""
    import torch
    from peft import LoraConfig, get_peft_model

    from speechalign.models.codec_lm import CodecLM, load_codec_lm

    base = work / "base"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "demo_lm", base)
    policy, adapters = str(base), []
    for n in range(1, rounds + 1):
        lm = load_codec_lm(policy, for_training=True)
        model = get_peft_model(lm.model, LoraConfig(r=cfg.train.lora_r, lora_alpha=cfg.train.lora_alpha,
                                                    target_modules="all-linear", task_type="CAUSAL_LM"))
        torch.manual_seed(n)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)  # a trained adapter's B is not zero
        adapters.append(str(work / f"adapter-{n}"))
        model.save_pretrained(adapters[-1])
        CodecLM(model.merge_and_unload(), lm.tokenizer, {**lm.metadata, "parent": policy, "round": n}).save(
            work / f"policy-{n}")
        policy = str(work / f"policy-{n}")
    return str(base), adapters, policy


def workdir_rounds(workdir: str, number: int, work: Path) -> tuple[str, list[str], str]:
    from speechalign.flows.common import ensure_campaign
    from speechalign.preference_store.store import open_store
    from speechalign.runtime.policies import rebuild_policy

    cfg = load_config(workdir=workdir)
    campaign = ensure_campaign(cfg)
    policy = cfg.layout.policy(number)
    if not (policy / METADATA_FILE).is_file():
        policy = rebuild_policy(cfg, open_store(cfg.store_url), campaign, number, work / "rebuilt")
    return campaign.base_model_path, [str(cfg.layout.adapter(n)) for n in range(1, number + 1)], str(policy)


def with_lineage(policy: str, base: str, adapters: list[str], out: Path) -> str:
    """A copy of the merged policy whose metadata names its base model and adapters (as rounds now record)."""
    shutil.copytree(policy, out)
    metadata = json.loads((out / METADATA_FILE).read_text())
    metadata.update(parent=metadata.get("parent", base), lineage={"base": base, "adapters": adapters})
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    return str(out)


def run(cfg: Config, model: str, policy: str, prompts: list[str], sampling: Sampling) -> dict:
    """Start the server on `model` (timed), point it at `policy` (timed), then the prompts' samples (timed)."""
    supervisor = Supervisor(cfg)
    supervisor.dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    supervisor.start(model)
    up = time.perf_counter() - started
    try:
        started = time.perf_counter()
        generator = VllmServer(cfg, policy)
        point = time.perf_counter() - started
        started = time.perf_counter()
        generator.sample(prompts[:1], [0], sampling)
        first = time.perf_counter() - started
        started = time.perf_counter()
        out = generator.sample(prompts, list(range(len(prompts))), sampling)
        seconds = time.perf_counter() - started
    finally:
        supervisor.stop()
    tokens = sum(len(g.units) + g.finished for g in out)
    return {"start_s": up, "point_s": point, "first_s": first, "seconds": seconds, "tokens": tokens,
            "tok_per_s": tokens / seconds, "units": [g.units for g in out]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", help="a work directory with completed rounds (default: random adapters on the demo)")
    ap.add_argument("--round", type=int, default=3, help="the round whose policy is served (its adapters stack)")
    ap.add_argument("--sequences", type=int, default=488, help="sequences a round generates (the demo's: 488)")
    ap.add_argument("--ranks", default="16,64", help="--max-lora-rank values to measure lora at")
    ap.add_argument("--vllm-python", default=".venv-vllm/bin/python")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="vllm-switch-"))
    sets = ["generate.backend=vllm", f'generate.vllm_url="http://127.0.0.1:{free_port()}"',
            f'generate.vllm_python="{Path(args.vllm_python).absolute()}"']
    cfg = load_config(workdir=str(work / "work"), overrides=sets)
    if args.workdir:
        base, adapters, merged = workdir_rounds(args.workdir, args.round, work)
    else:
        base, adapters, merged = random_rounds(work, args.round, cfg)
    policy = with_lineage(merged, base, adapters, work / "policy-with-lineage")
    sampling = Sampling(True, cfg.generate.temperature, cfg.generate.top_k, cfg.generate.top_p,
                        cfg.generate.max_new_tokens)
    from speechalign.models.codec_lm import load_tokenizer_only

    lm = load_tokenizer_only(policy)
    prompts = [lm.prompt(t, None) for t in demo_sentences(args.sequences, seed=11)]
    print(f"policy of round {args.round}: {len(adapters)} adapters of rank {cfg.train.lora_r} over {base}; "
          f"{args.sequences} sequences; load {open('/proc/loadavg').read().split()[0]}", flush=True)
    rows = {}
    restart = load_config(workdir=str(work / "work"), overrides=[*sets, "generate.vllm_policy_switch=restart"])
    rows["restart (merged weights)"] = run(restart, policy, policy, prompts, sampling)
    first = rows["restart (merged weights)"]
    switch = {"restart (merged weights)": first["start_s"] + first["point_s"] + first["first_s"]}
    for rank in [int(r) for r in args.ranks.split(",") if r]:
        if rank < cfg.train.lora_r * len(adapters):
            print(f"lora at --max-lora-rank {rank}: skipped, the stack's rank is {cfg.train.lora_r * len(adapters)}")
            continue
        lora = load_config(workdir=str(work / "work"), overrides=[*sets, "generate.vllm_policy_switch=lora",
                                                                  f"generate.vllm_max_lora_rank={rank}"])
        name = f"lora (max rank {rank})"
        rows[name] = run(lora, base, policy, prompts, sampling)
        switch[name] = rows[name]["point_s"] + rows[name]["first_s"]
    reference = rows["restart (merged weights)"]["units"]
    print(f"{'':28s} {'switch s':>9s} {'tokens':>7s} {'gen s':>7s} {'tok/s':>7s} {'round s':>8s}  same samples")
    for name, row in rows.items():
        same = sum(a == b for a, b in zip(row["units"], reference))
        print(f"{name:28s} {switch[name]:9.1f} {row['tokens']:7d} {row['seconds']:7.1f} {row['tok_per_s']:7.0f} "
              f"{switch[name] + row['seconds']:8.1f}  {same}/{len(reference)}")
    best = min(rows, key=lambda n: switch[n] + rows[n]["seconds"])
    print(f"a round's generation is fastest with: {best} (load {open('/proc/loadavg').read().split()[0]})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
