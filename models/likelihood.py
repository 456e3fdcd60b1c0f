"""How likely a policy finds the golden tokens: teacher-forced negative log-likelihood per unit.

Unlike a sampled or greedy sequence, this figure has no decoding noise, so it moves smoothly from
round to round; DPO that only pushes its own samples down while the golden tokens fall with them
shows up here first (SpeechAlign's "golden preferred" premise, measured on held-out prompts).
"""

from __future__ import annotations

import torch

from speechalign.models.codec_lm import CodecLM


def sequence_nll(lm: CodecLM, items: list[tuple[str, list[int]]], batch_size: int = 32) -> list[float]:
    """Each item's mean negative log-likelihood per completion token (one figure per sequence)."""
    sums, counts = _completion_nll(lm, items, batch_size)
    return [s / c for s, c in zip(sums, counts)]


@torch.no_grad()
def _completion_nll(lm: CodecLM, items: list[tuple[str, list[int]]], batch_size: int) -> tuple[list[float], list[int]]:
    """Per item: the summed NLL of its completion tokens, and how many there are."""
    tok, device = lm.tokenizer, lm.model.device
    sums: list[float] = []
    counts: list[int] = []
    for start in range(0, len(items), batch_size):
        rows, targets = [], []
        for prompt, units in items[start:start + batch_size]:
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            c = tok(lm.completion(units), add_special_tokens=False)["input_ids"]
            rows.append(p + c)
            targets.append([-100] * len(p) + c)
        width = max(map(len, rows))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets], device=device)
        lengths = torch.tensor([len(r) for r in rows], device=device)
        mask = (torch.arange(width, device=device)[None] < lengths[:, None]).long()
        logits = lm.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        shifted = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), shifted, ignore_index=-100, reduction="none")
        sums += nll.sum(1).tolist()
        counts += (shifted != -100).sum(1).tolist()
    return sums, counts
