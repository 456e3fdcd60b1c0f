"""Generation throughput: batched with a KV cache (what the generate stage does) against one
prompt at a time, and against batching without the cache, measured in the same run.

    .venv/bin/python benchmarks/generation.py [--policy DIR] [--prompts 64] [--batch 64]

Without --policy it uses an untrained demo-size model (same shapes as the demo's base model).
Prints units per second and the ratios to the baselines.

    .venv/bin/python benchmarks/generation.py --vllm [--policy DIR] [--sizes 64,1024] [--threads N]

The two generation backends on the demo's base model (models/demo_lm; or --policy), in one run: HF (this process,
transformers, batches of generate.batch_size = 64, torch's threads as given) against a vLLM server started here
from the vLLM environment (`scripts/install.sh .venv-vllm vllm`) as `speechalign vllm-serve` starts it, fed one
request per sample by the product's client, generate.vllm_concurrency in flight. The demo's sampling (temperature
1.0, 250 units at most), the same prompts and seeds; tokens per second (units and stop tokens) at each size, and
vLLM's ratio to HF.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import torch

from speechalign.bootstrap.demo_corpus import demo_sentences
from speechalign.config import Config
from speechalign.models.codec_lm import CodecLM, SpeechFormat, build_demo_model, build_demo_tokenizer, load_codec_lm
from speechalign.models.sampling import Sampling, generate_units


def demo_size_model() -> CodecLM:
    m = Config().model
    tok = build_demo_tokenizer(1024, [])
    model = build_demo_model(tok, m.layers, m.hidden_size, m.heads, m.max_positions, seed=0).eval()
    return CodecLM(model, tok, {"codebook_size": 1024, "format": asdict(SpeechFormat(speaker_in_prompt=False))})


def timed(fn) -> tuple[float, int]:
    start = time.perf_counter()
    units = fn()
    return time.perf_counter() - start, units


def run(lm: CodecLM, prompts: list[str], batch: int, tokens: int, use_cache: bool = True) -> int:
    sampling = Sampling(do_sample=True, max_new_tokens=tokens)
    total = 0
    for i in range(0, len(prompts), batch):
        if not use_cache:
            with torch.inference_mode():
                # generate_units builds its own GenerationConfig with use_cache=True; go through the model
                enc = lm.tokenizer(prompts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
                out = lm.model.generate(**enc, do_sample=True, max_new_tokens=tokens, min_new_tokens=tokens,
                                        use_cache=False, suppress_tokens=lm.non_speech_ids(),
                                        pad_token_id=lm.tokenizer.pad_token_id)
                total += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
        else:
            part = prompts[i:i + batch]
            total += sum(len(g.units) for g in generate_units(lm, part, sampling, list(range(i, i + len(part)))))
    return total


def backends(args) -> None:
    """HF against vLLM at each size (see the module's docstring)."""
    import shutil
    import socket
    import tempfile
    from pathlib import Path

    from speechalign.config import load_config
    from speechalign.models.vllm_backend import VllmServer
    from speechalign.runtime.vllm_server import Supervisor

    if args.threads:
        torch.set_num_threads(args.threads)
    policy = args.policy or str(Path(__file__).resolve().parents[1] / "models" / "demo_lm")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tempfile.mkdtemp(prefix="generation-bench-")
    cfg = load_config(workdir=work, overrides=[
        "generate.backend=vllm", f'generate.vllm_url="http://127.0.0.1:{port}"', "generate.vllm_policy_switch=restart",
        f'generate.vllm_python="{Path(args.vllm_python).absolute()}"', f"generate.vllm_concurrency={args.concurrency}"])
    g = cfg.generate
    sampling = Sampling(True, g.temperature, g.top_k, g.top_p, g.max_new_tokens)
    sizes = [int(n) for n in args.sizes.split(",")]
    hf = load_codec_lm(policy)
    texts = demo_sentences(max(sizes), seed=11)
    prompts = [hf.prompt(t, None) for t in texts]
    generate_units(hf, prompts[:4], Sampling(True, max_new_tokens=8), [0, 1, 2, 3])  # warm-up
    print(f"policy {policy}; HF: torch {torch.__version__}, {torch.get_num_threads()} torch threads, batches of "
          f"{g.batch_size}; vLLM: {g.vllm_concurrency} requests in flight; load {_load()}", flush=True)
    supervisor = Supervisor(cfg)
    supervisor.dir.mkdir(parents=True, exist_ok=True)
    supervisor.start(str(Path(policy).resolve()))
    try:
        binding = [line.split("]", 1)[-1].strip() for line in (supervisor.dir / "server.log").read_text().splitlines()
                   if "core ids=" in line or "VLLM_CPU_OMP_THREADS_BIND" in line]
        print("vLLM server CPU binding: " + "; ".join(binding[-2:]), flush=True)
        vllm = VllmServer(cfg, policy)
        vllm.sample(prompts[:4], [0, 1, 2, 3], Sampling(True, max_new_tokens=8))  # warm-up
        for n in sizes:
            seeds = list(range(n))
            rates = {}
            for name in ("hf", "vllm"):
                start = time.perf_counter()
                if name == "hf":
                    b = g.batch_size
                    out = [o for i in range(0, n, b) for o in generate_units(hf, prompts[i:i + b], sampling,
                                                                              seeds[i:i + b])]
                else:
                    out = vllm.sample(prompts[:n], seeds, sampling)
                seconds = time.perf_counter() - start
                tokens = sum(len(o.units) + o.finished for o in out)
                rates[name] = tokens / seconds
                print(f"{n:5d} sequences  {name:5s} {tokens:7d} tokens in {seconds:7.1f} s = {rates[name]:7.0f} tok/s "
                      f"({sum(o.finished for o in out)} finished; load {_load()})", flush=True)
            print(f"{n:5d} sequences  vLLM / HF = {rates['vllm'] / rates['hf']:.2f}x", flush=True)
    finally:
        supervisor.stop()
        shutil.rmtree(work, ignore_errors=True)


def _load() -> str:
    return open("/proc/loadavg").read().split()[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=120, help="units generated per prompt")
    ap.add_argument("--vllm", action="store_true", help="HF against a vLLM server on the demo model (see above)")
    ap.add_argument("--sizes", default="64,1024", help="--vllm: sequences per measurement")
    ap.add_argument("--threads", type=int, default=0, help="--vllm: HF's torch threads (0: torch's default)")
    ap.add_argument("--concurrency", type=int, default=64, help="--vllm: requests in flight")
    ap.add_argument("--vllm-python", default=".venv-vllm/bin/python")
    args = ap.parse_args()
    if args.vllm:
        backends(args)
        return
    lm = load_codec_lm(args.policy) if args.policy else demo_size_model()
    lm.tokenizer.padding_side = "left"
    prompts = [lm.prompt(t, None) for t in demo_sentences(args.prompts, seed=11)]
    run(lm, prompts[:4], 4, 8)  # warm-up
    rows = {}
    for name, batch, cache, n in [("batched + KV cache", args.batch, True, len(prompts)),
                                  ("one prompt at a time + KV cache", 1, True, min(16, len(prompts))),
                                  ("batched, no KV cache", args.batch, False, min(args.batch, len(prompts)))]:
        seconds, units = timed(lambda n=n, batch=batch, cache=cache: run(lm, prompts[:n], batch, args.tokens, cache))
        rows[name] = units / seconds
        print(f"{name:34s} {units:7d} units in {seconds:7.2f} s = {units / seconds:9.1f} units/s")
    best = rows["batched + KV cache"]
    for name, rate in rows.items():
        if name != "batched + KV cache":
            print(f"speed-up of batched + KV cache over {name}: {best / rate:.1f}x")


if __name__ == "__main__":
    main()
