"""Paired bootstrap intervals against hand computations, and a promotion gate that never ratchets down."""

import math

import numpy as np
import pytest

from speechalign.config import Config
from speechalign.runtime.results import Heldout, Registered, RoundRecord, Trained, Verdict
from speechalign.stats.intervals import changes, paired_change, worse_beyond
from speechalign.tasks.guard import guard_verdict, promotion_verdict

pytestmark = pytest.mark.pure  # make test-fast


def test_two_prompts_by_hand():
    # changes 0 and 1: a resample of two prompts has mean 0 (p 1/4), 0.5 (1/2) or 1 (1/4), so its 2.5th and
    # 97.5th percentiles are 0 and 1, and the change itself is 0.5
    assert paired_change({1: 5.0, 2: 7.0}, {1: 5.0, 2: 6.0}) == (0.5, 0.0, 1.0)
    assert paired_change({1: 3.0, 2: 4.0, 3: 5.0}, {1: 2.0, 2: 3.0, 3: 4.0}) == (1.0, 1.0, 1.0)  # no spread
    assert paired_change({1: 1.0}, {2: 1.0}) is None  # no prompt in common


def test_many_prompts_match_the_normal_interval():
    rng = np.random.default_rng(7)
    before = {p: float(v) for p, v in enumerate(rng.uniform(0.3, 0.9, 400))}
    now = {p: v + float(d) for (p, v), d in zip(before.items(), rng.normal(-0.02, 0.1, 400))}
    diffs = np.array([now[p] - before[p] for p in before])
    half = 1.959964 * diffs.std(ddof=1) / math.sqrt(len(diffs))  # the textbook interval, by hand
    mean, low, high = paired_change(now, before)
    assert mean == pytest.approx(diffs.mean())
    assert low == pytest.approx(diffs.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(diffs.mean() + half, abs=0.1 * half)
    assert set(changes({"asr_wer": now, "extra": now}, {"asr_wer": before})) == {"asr_wer"}


def test_a_regression_is_an_interval_beyond_the_tolerance():
    assert worse_beyond([0.05, 0.03, 0.07], higher_is_better=False, tolerance=0.02)  # error rate up, all of it
    assert not worse_beyond([0.05, 0.01, 0.09], higher_is_better=False, tolerance=0.02)  # could be noise
    assert worse_beyond([-0.2, -0.3, -0.15], higher_is_better=True, tolerance=0.1)  # DNSMOS down, all of it
    assert not worse_beyond([-0.2, -0.3, 0.05], higher_is_better=True, tolerance=0.1)


PROMPTS = range(60)


def evaluation(wer: float, ued: float, spread: float = 0.05) -> Heldout:
    """A round's held-out figures: per prompt, WER and UED around the given means (the same pattern each round)."""
    wave = np.sin(np.arange(len(PROMPTS)))
    pattern = (wave - wave.mean()) * spread  # mean 0: the round's figure is the given mean
    per_prompt = {"asr_wer": {p: wer + float(d) for p, d in zip(PROMPTS, pattern)},
                  "unit_edit_distance": {p: ued + float(d) for p, d in zip(PROMPTS, pattern)}}
    return Heldout(policy="/p", prompts=len(PROMPTS), samples=2 * len(PROMPTS), mode="sampled",
                   metrics={m: float(np.mean(list(v.values()))) for m, v in per_prompt.items()}, per_prompt=per_prompt)


def test_the_champion_stays_while_each_round_is_a_little_worse_than_the_last():
    cfg = Config()
    base = RoundRecord(0, {"evaluate": evaluation(0.40, 0.70)})
    champion, history = base, []
    # round 1 is better; rounds 2-5 each lose 0.004 WER and 0.003 UED: within every tolerance, and each within
    # tolerance of the round before, but never as good as round 1
    rounds = [evaluation(0.35, 0.65)] + [evaluation(0.35 + 0.004 * i, 0.65 + 0.003 * i) for i in range(1, 5)]
    for number, heldout in enumerate(rounds, start=1):
        decision = promotion_verdict(cfg, heldout, champion, Verdict(flagged=False))
        history.append(decision.verdict)
        if decision.verdict == "promoted":
            registered = Registered(run_id=f"r{number}", model="m", version=str(number))
            champion = RoundRecord(number, {"evaluate": heldout, "register": registered})
    assert history == ["promoted", "refused", "refused", "refused", "refused"]
    assert champion.number == 1
    assert "asr_wer 0.3540 is worse than the champion round 1, version 1's 0.3500" in \
        promotion_verdict(cfg, rounds[1], champion, Verdict(flagged=False)).reasons[0]


def test_the_guard_flags_a_regression_only_when_its_interval_is_beyond_the_tolerance():
    cfg = Config()
    trained = Trained(policy="/p", adapter="/a", pairs=8, steps=1, precision="fp32", runtime_s=1.0,
                      reference="previous",
                      final={"rewards/accuracies": 0.7, "rewards/margins": 0.1, "rewards/chosen": 0.01})
    before = evaluation(0.40, 0.70)
    previous = RoundRecord(1, {"evaluate": before, "train": trained})

    def judged(now: Heldout) -> Verdict:
        changed = changes(now.per_prompt, before.per_prompt)
        return guard_verdict(cfg, trained, Heldout(**{**now.__dict__, "changes": {"vs_previous": changed}}), previous)

    assert not judged(evaluation(0.43, 0.71)).flagged  # WER +0.03 (tolerance 0.05), UED +0.01 (0.02)
    flagged = judged(evaluation(0.50, 0.70))  # WER +0.10, every prompt worse
    assert flagged.flagged and flagged.reasons[0].startswith("held-out asr_wer 0.5000 vs 0.4000 (round 1): worse by")
    # the same mean change spread over the prompts: +0.10 on average, but +0.55 on some prompts and -0.35 on others
    noisy = evaluation(0.50, 0.70)
    swing = {p: v + (0.45 if p % 2 else -0.45) for p, v in noisy.per_prompt["asr_wer"].items()}
    assert not judged(Heldout(**{**noisy.__dict__, "per_prompt": {**noisy.per_prompt, "asr_wer": swing}})).flagged
