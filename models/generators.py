"""Where a policy's samples come from: one interface for every sample a round makes (candidates, held-out and probe
samples, an ablation's test samples), whichever engine runs the policy.

    generator = generator_for(cfg, policy)
    outputs = generator.sample(prompts, seeds, sampling)       # one Generated per prompt, prompt i drawn with seeds[i]

A sample depends on its prompt, its seed and the sampling settings only: not on the batch it is made in, on its
place there, or on the engine's own batching. Only speech units and the stop tokens can be generated.

    hf      transformers in this process (models/sampling.py: per-sample seeds by the Gumbel-max trick)
    vllm    a vLLM server over HTTP, one request per sample with its seed (models/vllm_backend.py); the policy's
            tokenizer is loaded here, its weights only in the server
"""

from __future__ import annotations

from typing import Protocol

from speechalign.config import Config
from speechalign.models.codec_lm import CodecLM, inference_policy
from speechalign.models.precision import decide_precision
from speechalign.models.sampling import Generated, Sampling, generate_units


class Generator(Protocol):
    lm: CodecLM  # the policy's tokenizer and speech format (its weights only where they run in this process)

    def sample(self, prompts: list[str], seeds: list[int], sampling: Sampling) -> list[Generated]: ...


class HfGenerator:
    """transformers' generate on the policy loaded in this process (once: `inference_policy`)."""

    def __init__(self, cfg: Config, policy: str):
        self.lm = inference_policy(policy, decide_precision(cfg.model.dtype))

    def sample(self, prompts: list[str], seeds: list[int], sampling: Sampling) -> list[Generated]:
        return generate_units(self.lm, prompts, sampling, seeds)


def generator_for(cfg: Config, policy: str) -> Generator:
    """The configured backend's generator for `policy` (generate.backend)."""
    if cfg.generate.backend == "vllm":
        from speechalign.models.vllm_backend import VllmServer  # noqa: PLC0415 - httpx and the server's routes

        return VllmServer(cfg, policy)
    return HfGenerator(cfg, policy)
