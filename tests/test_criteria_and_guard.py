"""Pair criteria (unanimous, single:<metric>), the collapse guard's signals and held-out regressions."""

import pytest

from speechalign.config import Config, ConfigError, load_config
from speechalign.criteria import candidate_diversity, criterion_function, single, unanimous
from speechalign.models.metrics import heldout_directions
from speechalign.preference_store.schema import Sample
from speechalign.runtime.preflight import check_names
from speechalign.tasks.guard import collapse_signals, regressions

pytestmark = pytest.mark.pure  # make test-fast


def sample(id, kind="candidate", k=0, tokens=None, prompt=1):
    return Sample(id=id, prompt_id=prompt, kind=kind, k=k, tokens=tokens or [id, id + 1])


def cfg_with(**pairs) -> Config:
    cfg = Config()
    for key, value in pairs.items():
        setattr(cfg.pairs, key, value)
    return cfg


# dnsmos_ovrl: higher is better; unit_edit_distance: lower is better
SCORES = {
    1: {"dnsmos_ovrl": 3.0, "unit_edit_distance": 0.2},  # best on both
    2: {"dnsmos_ovrl": 2.5, "unit_edit_distance": 0.5},  # beaten by 1 on both
    3: {"dnsmos_ovrl": 3.5, "unit_edit_distance": 0.9},  # better sound, worse content: no unanimous pair with 1, 2
    4: {"dnsmos_ovrl": None, "unit_edit_distance": 0.1},  # DNSMOS failed on it
    9: {"dnsmos_ovrl": 2.0, "unit_edit_distance": 0.0},  # golden
}


def test_unanimous_keeps_only_pairs_won_on_every_metric():
    samples = [sample(i, k=i) for i in (1, 2, 3, 4)] + [sample(9, kind="golden")]
    cfg = cfg_with(criterion="unanimous", metrics=["dnsmos_ovrl", "unit_edit_distance"])
    sel = unanimous(samples, SCORES, cfg)
    assert [(c.id, r.id) for c, r, _ in sel.pairs] == [(1, 2)]
    assert sel.considered == 6 and sel.skipped_unscored == 3  # C(4, 2); every pair with sample 4 lacks a value
    assert sel.pairs[0][2] == pytest.approx({"dnsmos_ovrl": 0.5, "unit_edit_distance": -0.3})

    cfg.pairs.margins = {"dnsmos_ovrl": 0.6}  # 1 beats 2 by 0.5 only: not enough
    assert unanimous(samples, SCORES, cfg).pairs == []

    with_golden = cfg_with(criterion="unanimous", metrics=["unit_edit_distance"], include_golden=True)
    sel = unanimous(samples, SCORES, with_golden)
    assert (9, 3) in [(c.id, r.id) for c, r, _ in sel.pairs] and sel.considered == 10  # C(5, 2)


def test_single_metric_criterion_and_identical_samples():
    samples = [sample(1, k=0), sample(2, k=1), sample(3, k=2)]
    cfg = cfg_with(criterion="single:dnsmos_ovrl")
    pairs = criterion_function(cfg)(samples, SCORES, cfg).pairs
    assert sorted((c.id, r.id) for c, r, _ in pairs) == [(1, 2), (3, 1), (3, 2)]
    twins = [sample(1, tokens=[5, 5]), sample(2, k=1, tokens=[5, 5])]  # same units: no preference
    assert single("dnsmos_ovrl")(twins, SCORES, cfg).pairs == []
    assert candidate_diversity(twins) == 0.0 and candidate_diversity(samples) > 0


def checked(*overrides: str) -> Config:
    """A config as every command takes it: read, then its plug-in and criterion names checked."""
    return check_names(load_config(None, list(overrides)))


def test_criteria_are_checked_before_any_work():
    with pytest.raises(ConfigError, match="scored on held-out samples only"):
        checked("pairs.criterion=single:asr_cer")
    cfg = checked("pairs.criterion=single:asr_cer", "score.metrics=unit_edit_distance,asr")
    assert cfg.pairs.criterion == "single:asr_cer"
    with pytest.raises(ConfigError, match="no \\[score\\] metric produces"):
        checked("pairs.criterion=single:nisqa_mos")
    with pytest.raises(ConfigError, match="reported only"):
        checked("pairs.criterion=single:length_ratio")
    with pytest.raises(ConfigError, match="golden_vs_synthetic, unanimous, pareto, best_of_k, single:<metric>"):
        load_config(None, ["pairs.criterion=best_of_n"])  # the name's form: when the config is read
    with pytest.raises(ConfigError, match="pairs.margins = 'dnsmos_ovrl': a table of metric = number"):
        load_config(None, ["pairs.margins=dnsmos_ovrl"])
    with pytest.raises(ConfigError, match="every entry is a metric name and a number >= 0"):
        load_config(None, ["pairs.margins={dnsmos_ovrl = -0.1}"])
    assert load_config(None, ["pairs.margins.dnsmos_ovrl=0.05"]).pairs.margins == {"dnsmos_ovrl": 0.05}
    with pytest.raises(ConfigError, match="unknown metric 'mos'"):
        checked("pairs.criterion=unanimous", "pairs.metrics=dnsmos_ovrl", "score.metrics=mos")
    with pytest.raises(ConfigError, match="guard.action"):
        load_config(None, ["guard.action=panic"])


# The end of DPO training in real demo runs (store of `speechalign demo`, round 3): a healthy run at
# the default learning rate, and one at 2e-4 whose held-out unit edit distance got worse.
HEALTHY = {"rewards/accuracies": 0.8375, "rewards/margins": 0.119, "rewards/chosen": 0.063, "logps/chosen": -77.2}
COLLAPSED = {"rewards/accuracies": 0.981, "rewards/margins": 2.067, "rewards/chosen": -0.240, "logps/chosen": -83.9}


def test_collapse_needs_saturated_accuracy_inflated_margins_and_a_falling_chosen_side():
    cfg = Config()
    assert collapse_signals(cfg.guard, HEALTHY) == []
    [reason] = collapse_signals(cfg.guard, COLLAPSED)
    assert "reward accuracy 0.981" in reason and "margin 2.067" in reason
    assert collapse_signals(cfg.guard, {**COLLAPSED, "rewards/chosen": 0.1}) == []  # chosen still rising: just learning
    # lr 4e-4, round 3 (reference = round 2's policy): the chosen reward stays above 0 within the round, but the
    # chosen log-probability fell from round to round
    lr4e4_round3, lr4e4_round2 = {**COLLAPSED, "rewards/chosen": 0.055, "logps/chosen": -78.7}, {"logps/chosen": -73.7}
    [reason] = collapse_signals(cfg.guard, lr4e4_round3, lr4e4_round2)
    assert "chosen log-probability -78.7 < -73.7 the round before" in reason
    assert collapse_signals(cfg.guard, lr4e4_round3, {"logps/chosen": -80.0}) == []
    # falling, but neither saturated nor inflated
    assert collapse_signals(cfg.guard, HEALTHY, {"logps/chosen": -70.0}) == []
    cfg.guard.margin_limit = 3.0
    assert collapse_signals(cfg.guard, COLLAPSED) == []


def test_a_held_out_metric_worse_than_its_tolerance_interval_and_all_is_a_regression():
    cfg = Config()
    before = {"unit_edit_distance": 0.660, "dnsmos_ovrl": 2.50, "length_ratio": 0.8, "golden_nll": 2.00}
    after = {"unit_edit_distance": 0.704, "dnsmos_ovrl": 2.45, "length_ratio": 0.5, "golden_nll": 2.09}
    changed = {"unit_edit_distance": [0.044, 0.035, 0.060],  # the whole interval beyond the tolerance 0.02
               "golden_nll": [0.090, 0.060, 0.120],  # beyond 0.05
               "dnsmos_ovrl": [-0.050, -0.080, -0.020],  # within 0.1
               "length_ratio": [-0.300, -0.400, -0.200]}  # no better side
    directions = heldout_directions(cfg.score)
    reasons = regressions(cfg.guard, directions, after, before, changed, "round 2")
    assert reasons == ["held-out unit_edit_distance 0.7040 vs 0.6600 (round 2): worse by 0.0440, 95% CI of the change "
                       "+0.0350 to +0.0600, beyond the tolerance 0.0200",
                       "held-out golden_nll 2.0900 vs 2.0000 (round 2): worse by 0.0900, 95% CI of the change "
                       "+0.0600 to +0.1200, beyond the tolerance 0.0500"]
    # a mean beyond the tolerance whose interval still reaches it is noise, not a regression
    noisy = {**changed, "unit_edit_distance": [0.044, 0.010, 0.080], "golden_nll": [0.090, 0.040, 0.140]}
    assert regressions(cfg.guard, directions, after, before, noisy, "round 2") == []
    better = {m: [-a, -c, -b] for m, (a, b, c) in changed.items()}
    assert regressions(cfg.guard, directions, before, after, better, "x") == []  # better is never a regression
    cfg.guard.tolerances = {}  # unlisted metrics: 5% of the reference value: UED's 0.033 and NLL's 0.100
    [reason] = regressions(cfg.guard, directions, after, before, changed, "round 2")
    assert reason.startswith("held-out unit_edit_distance") and reason.endswith("beyond the tolerance 0.0330")


def test_pareto_fronts_give_the_best_allowed_against_the_last_front():
    cfg = load_config(None, ["pairs.criterion=pareto", "pairs.metrics=asr_wer,speaker_similarity",
                             "score.metrics=unit_edit_distance,asr,speaker_similarity"])
    samples = [sample(i, k=i) for i in (1, 2, 3, 4)]
    scores = {1: {"asr_wer": 0.2, "speaker_similarity": 0.9},  # first front (nobody beats it on both)
              2: {"asr_wer": 0.1, "speaker_similarity": 0.8},  # first front
              3: {"asr_wer": 0.5, "speaker_similarity": 0.7},  # beaten by 1 and 2
              4: {"asr_wer": 0.9, "speaker_similarity": 0.6}}  # beaten by 3 too: the last front
    sel = criterion_function(cfg)(samples, scores, cfg)
    assert sorted((c.id, r.id) for c, r, _ in sel.pairs) == [(1, 4), (2, 4)] and sel.considered == 6
    cfg.pairs.chosen_limits = {"asr_wer": 0.15}  # only a sample Whisper understands this well may be chosen
    assert [(c.id, r.id) for c, r, _ in criterion_function(cfg)(samples, scores, cfg).pairs] == [(2, 4)]
    level = {i: {"asr_wer": 0.3, "speaker_similarity": 0.5} for i in (1, 2, 3, 4)}  # one front: no preference
    assert criterion_function(cfg)(samples, level, cfg).pairs == []
    with pytest.raises(ConfigError, match="chosen_limits names \\['dnsmos_ovrl'\\]"):
        checked("pairs.criterion=pareto", "pairs.metrics=asr_wer", "score.metrics=unit_edit_distance,asr",
                "pairs.chosen_limits={dnsmos_ovrl = 3.0}")
