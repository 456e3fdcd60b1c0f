"""Typed stage results: stored and loaded back as the same dataclass, figures named once, and the guard and
the promotion gate deciding from their arguments alone (no store, no MLflow)."""

import pytest

from speechalign.config import Config
from speechalign.runtime.results import (
    RESULT_TYPES,
    Audio,
    Candidates,
    Ceiling,
    Heldout,
    HeldoutAudio,
    HeldoutSamples,
    HeldoutScores,
    Pairs,
    Promotion,
    Registered,
    RoundRecord,
    Scores,
    Trained,
    Verdict,
    dump,
    figures,
    load,
)
from speechalign.tasks.guard import guard_verdict, promotion_verdict

pytestmark = pytest.mark.pure  # make test-fast

AUDIO = Audio(sample_ids=(3, 4), decoded=2, skipped=0, failed={"5": "unit 2000 is outside the codebook"},
              audio_seconds=4.2, seconds=1.0, real_time_factor=0.24)
HELDOUT = Heldout(policy="/w/round-001/policy", prompts=2, samples=4, mode="sampled",
                  metrics={"unit_edit_distance": 0.5, "dnsmos_ovrl": 2.4, "golden_nll": 0.9, "finished_rate": 1.0},
                  per_prompt={"unit_edit_distance": {1: 0.4, 2: 0.6}, "dnsmos_ovrl": {1: 2.3, 2: 2.5},
                              "golden_nll": {1: 0.8, 2: 1.0}, "finished_rate": {1: 1.0, 2: 1.0}},
                  changes={"vs_base": {"unit_edit_distance": [-0.1, -0.2, 0.0]}}, probe={"unit_edit_distance": 0.3})
TRAINED = Trained(policy="/w/round-001/policy", adapter="/w/round-001/adapter", pairs=8, steps=1, precision="fp32",
                  runtime_s=3.5, reference="previous",
                  final={"rewards/accuracies": 0.75, "rewards/margins": 0.1, "rewards/chosen": 0.02,
                         "logps/chosen": -70.0},
                  history=[{"step": 1, "loss": 0.69}])
EVERY_STAGE = [
    Candidates(sample_ids=(1, 2, 3), prompts=1, generated=2, hit_length_limit=0), AUDIO,
    Scores(sample_ids=(1, 2), metrics=("dnsmos",), failures=0, means={"dnsmos_ovrl": 2.5}),
    Pairs(criterion="golden_vs_synthetic", pairs=2, candidates=2, candidate_pairs=2, pair_yield=1.0,
          candidate_diversity=0.4),
    TRAINED,
    HeldoutSamples(policy="/w/round-001/policy", sample_ids=(7, 8), prompts=1, probe_prompts=0, generated=2,
                   hit_length_limit=1),
    HeldoutAudio(sample_ids=(7, 8), decoded=2, skipped=0, audio_seconds=3.0, seconds=0.5, real_time_factor=0.17),
    HeldoutScores(sample_ids=(7, 8), metrics=("asr",), failures=1, means={"asr_wer": 0.8}),
    HELDOUT, Ceiling(rows={"recording": {"asr_wer": 0.25}, "golden_tokens": {"asr_wer": 0.68}}),
    Verdict(flagged=True, collapse=False, reasons=("held-out x worse",), action="warn"),
    Registered(run_id="abc", model="speechalign-demo", version="1"),
    Promotion(verdict="refused", reasons=("worse",), against="base model, round 0", alias="champion", version="1"),
]


def test_every_stage_result_comes_back_from_the_store_as_it_went_in():
    assert sorted(RESULT_TYPES) == sorted(type(r).stage for r in EVERY_STAGE)
    for result in EVERY_STAGE:
        assert load(type(result), dump(result)) == result


def test_figures_are_named_by_their_stage_and_field():
    pairs = EVERY_STAGE[3]
    assert figures(pairs) == {"pairs/pairs": 2.0, "pairs/human_pairs": 0.0, "pairs/pair_yield": 1.0,
                              "pairs/candidate_diversity": 0.4}
    assert figures(HELDOUT)["heldout/dnsmos_ovrl"] == 2.4 and figures(TRAINED)["dpo/rewards/accuracies"] == 0.75
    assert figures(HELDOUT)["probe/unit_edit_distance"] == 0.3
    assert figures(EVERY_STAGE[10]) == {"guard/flagged": 1.0}
    # the held-out stages' figures are named by their own stages, not by the candidates' they share a type with
    assert figures(EVERY_STAGE[6]) == {"decode_heldout/real_time_factor": 0.17}
    assert figures(EVERY_STAGE[7]) == {"score_heldout/failures": 1.0}
    assert figures(EVERY_STAGE[5]) == {"generate_heldout/hit_length_limit": 1.0}
    record = RoundRecord(1, {"pairs": pairs, "evaluate": HELDOUT})
    assert record.figures()["pairs/pair_yield"] == 1.0 and record.heldout is HELDOUT and record.trained is None


def with_metrics(**metrics) -> Heldout:
    """HELDOUT with some metrics moved by the same amount on every prompt: every bootstrap resample of the prompts
    then has that change, so its interval is [change, change] (written here by hand)."""
    moved = {m: metrics.get(m, HELDOUT.metrics[m]) - HELDOUT.metrics[m] for m in HELDOUT.metrics}
    per_prompt = {m: {p: v + moved[m] for p, v in values.items()} for m, values in HELDOUT.per_prompt.items()}
    change = {m: [d, d, d] for m, d in moved.items()}
    return Heldout(policy="/p", prompts=2, samples=4, mode="sampled", metrics={**HELDOUT.metrics, **metrics},
                   per_prompt=per_prompt, changes={"vs_previous": change, "vs_champion": change})


def test_the_guard_decides_from_its_arguments():
    cfg = Config()
    previous = RoundRecord(1, {"train": TRAINED, "evaluate": HELDOUT})
    assert guard_verdict(cfg, TRAINED, with_metrics(), previous) == Verdict(flagged=False, action="warn")
    worse = guard_verdict(cfg, TRAINED, with_metrics(unit_edit_distance=0.55), previous)  # +0.05 > 0.02
    assert worse.flagged and not worse.collapse
    assert worse.reasons == ("held-out unit_edit_distance 0.5500 vs 0.5000 (round 1): worse by 0.0500, 95% CI of the "
                             "change +0.0500 to +0.0500, beyond the tolerance 0.0200",)
    saturated = Trained(**{**TRAINED.__dict__, "final": {"rewards/accuracies": 0.99, "rewards/margins": 2.0,
                                                         "rewards/chosen": 0.05, "logps/chosen": -75.0}})
    collapsed = guard_verdict(cfg, saturated, with_metrics(), previous)  # chosen log-probability -75 < -70 before
    assert collapsed.flagged and collapsed.collapse and "chosen log-probability -75.0 < -70.0" in collapsed.reasons[0]


def test_the_gate_compares_with_the_champion_and_follows_the_guard_action():
    cfg = Config()
    champion = RoundRecord(2, {"evaluate": HELDOUT, "register": Registered(run_id="r2", model="m", version="2")})
    ok = Verdict(flagged=False)
    better = promotion_verdict(cfg, with_metrics(unit_edit_distance=0.45), champion, ok)
    assert (better.verdict, better.against) == ("promoted", "champion round 2, version 2")
    worse = promotion_verdict(cfg, with_metrics(dnsmos_ovrl=2.2), champion, ok)  # -0.2, tolerance 0.1
    assert worse.verdict == "refused" and worse.reasons[0].startswith("held-out dnsmos_ovrl 2.2000 vs 2.4000")
    flagged = Verdict(flagged=True, reasons=("DPO collapse",))
    assert promotion_verdict(cfg, HELDOUT, champion, flagged).verdict == "promoted"  # action warn: only a warning
    cfg.guard.action = "refuse_promotion"
    assert promotion_verdict(cfg, HELDOUT, champion, flagged).reasons == (
        "the collapse guard flagged this round: DPO collapse",)
    cfg.guard.champion_alias = ""
    assert promotion_verdict(cfg, HELDOUT, champion, ok).verdict == "off"
    base = RoundRecord(0, {"evaluate": HELDOUT})
    assert promotion_verdict(Config(), HELDOUT, base, ok).against == "base model, round 0"
