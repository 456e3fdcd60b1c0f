"""Where a codec LM runs and in which dtype: one decision, from `[model] dtype` and the hardware, for every stage.

    dtype = "auto"      CPU                      GPU with bf16            GPU without bf16 (V100, T4)
    inference           fp32                     bf16                     fp16
    training loads      fp32                     bf16 (frozen base, LoRA) fp32 master weights
    trainer autocast    none                     bf16                     fp16

Inference covers generation, likelihoods, the DPO reference, merges and every policy written to disk: a merged
policy is saved in the dtype it is served in, never as a silent fp32 copy of a bf16 model. `dtype = "bf16"`,
`"fp16"` or `"fp32"` asks for that dtype where the hardware has it, and fails with the knob to change where not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Precision:
    device: str  # "cuda" or "cpu"
    inference: torch.dtype  # generation, likelihoods, the DPO reference, merges, saved policies
    training: torch.dtype  # the weights a trainer loads
    autocast: str  # the trainer's mixed precision: "bf16", "fp16" or "no"

    @property
    def name(self) -> str:
        """How a round reports it: the trainer's compute dtype."""
        return self.autocast if self.autocast != "no" else "fp32"

    def trainer_flags(self) -> dict[str, bool]:
        """TRL / transformers TrainingArguments' flags for it."""
        return {"bf16": self.autocast == "bf16", "fp16": self.autocast == "fp16", "use_cpu": self.device == "cpu"}


def decide_precision(dtype: str = "auto", cuda: bool | None = None, bf16: bool | None = None) -> Precision:
    """The precision for `[model] dtype` on this machine (`cuda` and `bf16` describe another machine, for tests and
    plans)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    bf16 = (cuda and torch.cuda.is_bf16_supported()) if bf16 is None else bf16
    if dtype not in ("auto", *DTYPES):
        raise ValueError(f"model.dtype = {dtype!r}; it can be auto, {', '.join(DTYPES)}")
    wanted = dtype if dtype != "auto" else "bf16" if bf16 else "fp16" if cuda else "fp32"
    device = "cuda" if cuda else "cpu"
    if wanted == "bf16" and cuda and not bf16:
        raise ValueError("model.dtype = \"bf16\", but this GPU has no bf16; set model.dtype = \"auto\" (fp16 "
                         "inference, fp32 master weights for training) or \"fp32\"")
    if wanted == "fp16" and not cuda:
        raise ValueError("model.dtype = \"fp16\" needs a GPU; on a CPU set model.dtype = \"auto\" (fp32)")
    if wanted == "bf16":
        return Precision(device, torch.bfloat16, torch.bfloat16, "bf16")
    if wanted == "fp16":  # fp16 weights do not train stably: fp32 master weights under fp16 autocast
        return Precision(device, torch.float16, torch.float32, "fp16")
    return Precision(device, torch.float32, torch.float32, "no")
