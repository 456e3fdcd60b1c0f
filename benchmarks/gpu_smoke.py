"""A GPU check ready to run: a ~0.5B Llama (random weights, the demo's unit vocabulary) through what a round does to a
policy: LoRA DPO steps in the round's precision, batched generation of units, the adapter merged and saved.

    .venv/bin/python benchmarks/gpu_smoke.py                   # 0.5B on the GPU (bf16 where the card has it)
    .venv/bin/python benchmarks/gpu_smoke.py --size tiny       # the same path at a size a CPU runs in a minute

Prints the DPO step time and its model FLOPs utilisation against the card's dense bf16 peak (the policy's forward
and backward through frozen weights, about 4 x parameters FLOPs a token, and the reference's forward, 2 x), the
generated tokens per second, the peak memory, and the disk the adapter and the merged policy took. The dtypes are
models/precision.py's decision for `--dtype` on this machine, as a round's would be.
"""

from __future__ import annotations

import os

for quiet in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_OFFLINE"):
    os.environ.setdefault(quiet, "1")

import argparse
import random
import resource
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import LlamaConfig, LlamaForCausalLM, PrinterCallback, TrainerCallback
from trl import DPOConfig, DPOTrainer

from speechalign.models.codec_lm import DEMO_FORMAT, CodecLM, build_demo_tokenizer
from speechalign.models.precision import decide_precision
from speechalign.models.sampling import Sampling, generate_units
from speechalign.runtime.policies import merged_lineage

SIZES = {  # hidden, intermediate, layers, heads, kv heads
    "0.5b": (1280, 3456, 24, 20, 4),
    "tiny": (64, 176, 2, 4, 2),
}
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def build(size: str, dtype: torch.dtype) -> CodecLM:
    hidden, intermediate, layers, heads, kv = SIZES[size]
    tokenizer = build_demo_tokenizer(1024, ["en-us+m3", "en-gb+f3"])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                         max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(dtype)
    return CodecLM(model, tokenizer, {"codebook_size": 1024, "format": asdict(DEMO_FORMAT), "source": "gpu_smoke"})


def pairs(lm: CodecLM, n: int, units: int) -> Dataset:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        prompt = lm.prompt(f"sentence number {i} of the smoke test.", "en-us+m3")
        rows.append({"prompt": prompt, "chosen": lm.completion([rng.randrange(1024) for _ in range(units)]),
                     "rejected": lm.completion([rng.randrange(1024) for _ in range(units)])})
    return Dataset.from_list(rows)


def peak_memory() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="0.5b")
    ap.add_argument("--dtype", default="auto", help="[model] dtype: auto, bf16, fp16, fp32")
    ap.add_argument("--steps", type=int, default=6, help="DPO steps (the first is a warm-up, not timed)")
    ap.add_argument("--batch", type=int, default=8, help="pairs a step")
    ap.add_argument("--units", type=int, default=250, help="units of each side of a pair, and generated a sample")
    ap.add_argument("--prompts", type=int, default=64, help="sequences generated in one batch")
    args = ap.parse_args()
    precision = decide_precision(args.dtype)
    lm = build(args.size, precision.training)
    parameters = sum(p.numel() for p in lm.model.parameters())
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{args.size}: {parameters / 1e6:,.1f} M parameters on {device}; training {precision.training}, "
          f"inference {precision.inference}, autocast {precision.autocast}; torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "base").mkdir()
        lm.model.to(precision.inference)
        lm.save(work / "base")
        lm.model.to(precision.training)
        dataset = pairs(lm, args.batch * args.steps, args.units)
        dpo = DPOConfig(output_dir=str(work / "dpo"), per_device_train_batch_size=args.batch, max_steps=args.steps,
                        learning_rate=1e-4, logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
                        gradient_checkpointing=False, max_length=1024, **precision.trainer_flags())
        trainer = DPOTrainer(model=lm.model, args=dpo, train_dataset=dataset, processing_class=lm.tokenizer,
                             peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                    task_type="CAUSAL_LM"))
        trainer.remove_callback(PrinterCallback)
        stamps: list[float] = []

        class Clock(TrainerCallback):
            def on_step_end(self, *a, **k):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                stamps.append(time.perf_counter())

        trainer.add_callback(Clock())
        trainer.train()
        step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        tokens = args.batch * 2 * (args.units + 12)  # both sides of each pair, the prompt's dozen tokens
        flops = tokens * parameters * (4 + 2)  # policy forward + backward through frozen weights, the reference
        peak = next((v for k, v in BF16_PEAK.items() if k in device), None)
        mfu = f"{flops / step / peak:.1%} of {peak / 1e12:.0f} TFLOPs" if peak else "- (no bf16 peak for this device)"
        print(f"DPO step ({args.batch} pairs of {args.units} units, LoRA r=16): {step:.3f} s; MFU {mfu}")
        trainer.model.save_pretrained(work / "adapter")
        policy = trainer.model.merge_and_unload().to(precision.inference).eval()
        lm.model = policy.to(precision.device)
        prompts = [lm.prompt(f"a generated sentence {i}.", "en-us+m3") for i in range(args.prompts)]
        sampling = Sampling(max_new_tokens=args.units)
        generate_units(lm, prompts[:2], Sampling(max_new_tokens=8), [0, 1])  # warm-up
        started = time.perf_counter()
        made = generate_units(lm, prompts, sampling, list(range(len(prompts))))
        seconds = time.perf_counter() - started
        units = sum(len(g.units) + g.finished for g in made)
        print(f"generation ({args.prompts} sequences, up to {args.units} units): {units / seconds:,.0f} tokens/s "
              f"({units} tokens in {seconds:.1f} s)")
        merged = merged_lineage(str(work / "base"), [str(work / "adapter")], precision)
        merged.save(work / "merged")
        print(f"peak memory: {peak_memory():.2f} GB ({'GPU allocated' if torch.cuda.is_available() else 'RSS'})")
        print(f"disk: adapter {folder_bytes(work / 'adapter') / 1e6:.1f} MB, merged policy "
              f"{folder_bytes(work / 'merged') / 1e6:.1f} MB ({merged.model.dtype})")
        shutil.rmtree(work / "dpo", ignore_errors=True)


if __name__ == "__main__":
    main()
