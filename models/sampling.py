"""Batched unit generation with transformers, each sample with its own seed: the HF generation backend.

A sample's tokens depend on its prompt, its seed and the sampling settings, never on the batch it is generated in
or its place there, as vLLM's per-request seeds do (tasks/generators.py serves both backends through one interface).
transformers draws every row of a batch from one random stream, so sampling here is done by `PerSampleSampler`: at
each step, each row's logits get the temperature, top-k and top-p cuts, then Gumbel noise from the row's own
generator (seeded by the sample's seed), and the greedy pick of noisy logits is an exact draw from the cut
distribution (the Gumbel-max trick). Prompts are left-padded; only units and the stop tokens can be produced.

A model whose units interleave k codebooks (its metadata's "frame", models/codecs `Flattening`) is held to the frame's
order by `FrameOrder`: at the i-th generated position only codebook (i mod k)'s units can be produced, and a stop token
only where a frame is complete, so every finished sample decodes. (A sample that hits max_new_tokens mid-frame is
trimmed to whole frames when it is decoded.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

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


class PerSampleSampler(LogitsProcessor):
    """Turns greedy decoding into sampling with one random stream per row (see the module's docstring)."""

    def __init__(self, seeds: list[int], sampling: Sampling, device: torch.device):
        self.sampling = sampling
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        s = self.sampling
        scores = scores.float() / s.temperature
        if s.top_k > 0:
            kth = torch.topk(scores, min(s.top_k, scores.shape[-1]), dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if s.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True, dim=-1)
            beyond = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1) >= s.top_p  # mass before it reached top_p
            scores = scores.masked_fill(beyond.scatter(-1, order, beyond), float("-inf"))
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device)
                               for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(min=torch.finfo(uniform.dtype).tiny)))
        return scores + gumbel


class SpeechOnly(LogitsProcessor):
    """-inf on every id but the units and the stop tokens (`CodecLM.non_speech_ids`), as transformers'
    `suppress_tokens` does, from a mask made once: its processor compares the whole vocabulary with the suppressed ids
    at every step (`torch.isin`), 0.1 s a step for a vocabulary of 65,536 units on a CPU. Adding 0 leaves every other
    logit as it is, so the samples are the same."""

    def __init__(self, suppressed: list[int], device: torch.device):
        self.suppressed = torch.tensor(suppressed, dtype=torch.long, device=device)
        self.mask: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.mask is None or self.mask.shape[-1] != scores.shape[-1]:
            self.mask = torch.zeros(scores.shape[-1], dtype=scores.dtype, device=scores.device)
            self.mask[self.suppressed[self.suppressed < scores.shape[-1]]] = float("-inf")
        return scores + self.mask


class FrameOrder(LogitsProcessor):
    """Only codebook (position mod k)'s units at each generated position, stop tokens only between frames."""

    def __init__(self, lm: CodecLM, prompt_length: int, vocabulary: int, device: torch.device):
        frame = lm.metadata["frame"]
        self.k, size = int(frame["codebooks"]), int(frame["codebook_size"])
        self.start = prompt_length
        unit_ids = torch.tensor(lm.unit_ids(), device=device)
        self.masks = []
        for c in range(self.k):
            allowed = unit_ids[c * size:(c + 1) * size]
            if c == 0:
                allowed = torch.cat([allowed, torch.tensor(lm.stop_ids(), device=device)])
            mask = torch.full((vocabulary,), float("-inf"), device=device)
            mask[allowed] = 0.0
            self.masks.append(mask)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        position = input_ids.shape[1] - self.start  # prompts are left-padded: every row is at the same position
        return scores + self.masks[position % self.k].to(scores.dtype)


def speech_processors(lm: CodecLM, prompt_length: int, device: torch.device) -> list[LogitsProcessor]:
    """[SpeechOnly], and [FrameOrder] for a model that speaks several interleaved codebooks."""
    out: list[LogitsProcessor] = [SpeechOnly(lm.non_speech_ids(), device)]
    if int(lm.metadata.get("frame", {}).get("codebooks", 1)) > 1:
        out.append(FrameOrder(lm, prompt_length, lm.model.get_output_embeddings().weight.shape[0], device))
    return out


@torch.inference_mode()
def generate_units(lm: CodecLM, prompts: list[str], sampling: Sampling, seeds: list[int]) -> list[Generated]:
    """One batch: a sequence of units per prompt, the i-th drawn with `seeds[i]` (greedy: seeds are not used)."""
    if len(seeds) != len(prompts):
        raise ValueError(f"generate_units: {len(prompts)} prompts and {len(seeds)} seeds; give one seed a prompt")
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
        do_sample=False, max_new_tokens=sampling.max_new_tokens, use_cache=True, **static,
        eos_token_id=lm.stop_ids(), pad_token_id=tokenizer.pad_token_id)
    processors = LogitsProcessorList(speech_processors(lm, enc["input_ids"].shape[1], model.device) +
                                     ([PerSampleSampler(seeds, sampling, model.device)] if sampling.do_sample else []))
    was_training = model.training
    model.eval()
    out = model.generate(**enc, generation_config=config, logits_processor=processors)
    model.train(was_training)
    start = enc["input_ids"].shape[1]
    results = []
    for row in out[:, start:].tolist():
        units, finished = lm.ids_to_units(row)
        results.append(Generated(units, finished))
    return results
