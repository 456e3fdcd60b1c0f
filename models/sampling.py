"""Batched unit generation with a KV cache: the one place that calls `model.generate`.

Generation, evaluation and the benchmarks all come here, so a candidate and an evaluation sample
are made the same way. Prompts are left-padded; only units and the stop tokens can be produced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from speechalign.models.codec_lm import CodecLM


@dataclass
class Sampling:
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 300

    def as_dict(self) -> dict:
        return {"do_sample": self.do_sample, "temperature": self.temperature, "top_k": self.top_k,
                "top_p": self.top_p, "max_new_tokens": self.max_new_tokens}


@dataclass
class Generated:
    units: list[int]
    finished: bool  # ended with a stop token, not at the length limit


@torch.inference_mode()
def generate_units(lm: CodecLM, prompts: list[str], sampling: Sampling, seed: int) -> list[Generated]:
    """One batch: a sequence of units per prompt. `seed` makes the batch reproducible."""
    tokenizer, model = lm.tokenizer, lm.model
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    # On a CPU, a static KV cache where the architecture has one (transformers marks those that compile whole): a
    # batch's keys and values are written in place instead of concatenated at every step (the same sequences,
    # greedy evaluation a third faster on the demo model). Not on a GPU, where transformers would compile the
    # forward for it, once per batch shape; measured on a CPU only.
    static = {"cache_implementation": "static"} if (model.device.type == "cpu" and
                                                      getattr(model, "_can_compile_fullgraph", False)) else {}
    config = GenerationConfig(
        do_sample=sampling.do_sample, max_new_tokens=sampling.max_new_tokens, use_cache=True, **static,
        eos_token_id=lm.stop_ids(), pad_token_id=tokenizer.pad_token_id, suppress_tokens=lm.non_speech_ids(),
        **({"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}
           if sampling.do_sample else {}),
    )
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    out = model.generate(**enc, generation_config=config)
    model.train(was_training)
    start = enc["input_ids"].shape[1]
    results = []
    for row in out[:, start:].tolist():
        units, finished = lm.ids_to_units(row)
        results.append(Generated(units, finished))
    return results
