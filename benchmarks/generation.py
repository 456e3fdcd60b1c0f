"""Generation throughput: batched with a KV cache (what the generate stage does) against one
prompt at a time, and against batching without the cache, measured in the same run.

    .venv/bin/python benchmarks/generation.py [--policy DIR] [--prompts 64] [--batch 64]

Without --policy it uses an untrained demo-size model (same shapes as the demo's base model).
Prints units per second and the ratios to the baselines.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=120, help="units generated per prompt")
    args = ap.parse_args()
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
