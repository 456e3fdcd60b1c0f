"""The distribution gap's figures and the paired bootstrap interval of their change, on hand-made units."""

import math
import random

import pytest

from speechalign.stats.distribution_gap import bigram_kl, gap_changes, unit_kl

pytestmark = pytest.mark.pure


def test_unit_kl_is_the_add_half_smoothed_kl_over_the_units_either_side_uses():
    # golden 1,1,2 and sampled 2,2,2: counts (2, 1) and (0, 3), +0.5 each, over {1, 2}
    expected = 0.625 * math.log(0.625 / 0.125) + 0.375 * math.log(0.375 / 0.875)
    assert unit_kl([[1, 1, 2]], [[2, 2, 2]]) == pytest.approx(expected)
    assert unit_kl([[1, 1, 2]], [[1, 2, 1]]) == pytest.approx(0.0)
    # bigrams (1,1), (1,2) against (2,2), (2,2): counts (1, 1, 0) and (0, 0, 2), +0.5 each
    a, b = [1.5 / 3.5, 1.5 / 3.5, 0.5 / 3.5], [0.5 / 3.5, 0.5 / 3.5, 2.5 / 3.5]
    assert bigram_kl([[1, 1, 2]], [[2, 2, 2]]) == pytest.approx(sum(x * math.log(x / y) for x, y in zip(a, b)))


def test_one_prompt_gives_the_change_of_the_figures_with_no_spread():
    change = gap_changes({7: [1, 1, 2]}, now={7: [[2, 2, 2]]}, before={7: [[1, 1, 2]]})
    expected = 0.625 * math.log(0.625 / 0.125) + 0.375 * math.log(0.375 / 0.875)
    assert change["unit_kl"] == pytest.approx([expected] * 3)


def test_the_same_samples_change_nothing_and_a_round_that_matches_golden_closes_the_gap():
    rng = random.Random(0)
    golden = {p: [rng.randrange(40) for _ in range(30)] for p in range(25)}
    far = {p: [[rng.randrange(40, 80) for _ in range(30)] for _ in range(2)] for p in golden}
    same = gap_changes(golden, now=far, before=far)
    assert all(v == pytest.approx([0, 0, 0]) for v in same.values())

    closer = gap_changes(golden, now={p: [g, g] for p, g in golden.items()}, before=far)
    for name, figure in (("unit_kl", unit_kl), ("bigram_kl", bigram_kl)):
        g = list(golden.values())
        mean, low, high = closer[name]
        assert mean == pytest.approx(figure(g, g + g) - figure(g, [s for v in far.values() for s in v]))
        assert low < high < 0  # the whole interval: the gap closed


def test_only_prompts_both_rounds_and_the_golden_side_have_count():
    golden = {1: [1, 2, 3], 2: [4, 5, 6]}
    assert gap_changes(golden, now={1: [[1, 2, 3]]}, before={1: [[3, 2, 1]]}) == \
        gap_changes({1: [1, 2, 3]}, now={1: [[1, 2, 3]]}, before={1: [[3, 2, 1]]})
    assert gap_changes(golden, now={3: [[1]]}, before={3: [[1]]}) == {}
