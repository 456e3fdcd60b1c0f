"""Scoring (metrics as plug-ins, failures isolated per sample) and the golden_vs_synthetic criterion."""

import pytest

from speechalign.config import Config
from speechalign.criteria import golden_vs_synthetic
from speechalign.models.metrics import ScoreItem, get_metric
from speechalign.preference_store.schema import Sample
from speechalign.tasks.score import score_batch

pytestmark = pytest.mark.pure  # make test-fast


def item(tokens, golden):
    return ScoreItem(tokens=tokens, golden_tokens=golden, text="t")


def test_token_metrics():
    ued, ratio = get_metric("unit_edit_distance"), get_metric("length_ratio")
    golden = [1, 2, 3, 4]
    values = ued.score([item([1, 2, 3, 4], golden), item([1, 9, 3, 4], golden), item([], golden)])
    assert [v["unit_edit_distance"] for v in values] == [0.0, 0.25, 1.0]
    assert ued.score([item([1, 2, 3, 4, 5, 6, 7, 8], golden)]) == [{"unit_edit_distance": 1.0}]  # four insertions
    assert [v["length_ratio"] for v in ratio.score([item([1, 2], golden), item([1] * 8, golden)])] == [0.5, 2.0]
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        get_metric("nope")


class FailsOnEmpty:
    """A metric plug-in that cannot score empty sequences, as a real model-based metric might not."""

    name = "fails_on_empty"
    outputs = {"length": True, "half_length": True}

    def score(self, items):
        if any(not i.tokens for i in items):
            raise RuntimeError("cannot score an empty sequence")
        return [{"length": float(len(i.tokens)), "half_length": len(i.tokens) / 2} for i in items]


def test_a_metric_failure_costs_only_the_failing_sample():
    samples = [Sample(id=i, tokens=t) for i, t in enumerate([[1, 2], [], [3]])]
    rows = score_batch(FailsOnEmpty(), samples, [item(s.tokens, [1]) for s in samples])
    assert [(r["sample_id"], r["metric"], r["value"]) for r in rows] == [
        (0, "length", 2.0), (0, "half_length", 1.0), (1, "length", None), (1, "half_length", None),
        (2, "length", 1.0), (2, "half_length", 0.5)]
    assert rows[2]["error"] == rows[3]["error"] == "RuntimeError: cannot score an empty sequence"


def test_golden_vs_synthetic_pairs_golden_against_every_differing_candidate():
    golden = Sample(id=1, prompt_id=7, kind="golden", k=0, tokens=[1, 2, 3])
    same = Sample(id=2, prompt_id=7, kind="candidate", k=0, tokens=[1, 2, 3])
    near = Sample(id=3, prompt_id=7, kind="candidate", k=1, tokens=[1, 2, 4])
    far = Sample(id=4, prompt_id=7, kind="candidate", k=2, tokens=[9, 9])
    scores = {1: {"unit_edit_distance": 0.0}, 2: {"unit_edit_distance": 0.0},
              3: {"unit_edit_distance": 1 / 3}, 4: {"unit_edit_distance": 1.0}}
    selection = golden_vs_synthetic([golden, same, near, far], scores, Config())
    pairs = selection.pairs
    assert selection.considered == 3
    assert [(c.id, r.id) for c, r, _ in pairs] == [(1, 3), (1, 4)]  # an identical candidate is no preference
    assert pairs[1][2] == {"unit_edit_distance": -1.0}
    capped = Config()
    capped.pairs.max_pairs_per_prompt = 1
    selected = golden_vs_synthetic([golden, same, near, far], scores, capped).pairs
    assert [(c.id, r.id) for c, r, _ in selected] == [(1, 4)]


def test_one_instance_per_plugin_is_kept():
    from speechalign.config import ScoreConfig
    from speechalign.models.metrics import _CACHE

    a = get_metric("unit_edit_distance", ScoreConfig(), policy="/round-1/policy")
    assert get_metric("unit_edit_distance", ScoreConfig(), policy="/round-2/policy") is a  # needs no policy
    other = ScoreConfig(batch_size=8)
    b = get_metric("unit_edit_distance", other)
    assert b is not a and sum(k[0] == "unit_edit_distance" for k in _CACHE) == 1  # the old one was let go
