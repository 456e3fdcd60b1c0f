"""The order samples are decoded in: every kind of sample the store holds can be decoded (the final evaluation's
"test" samples crashed the decoder's ordering once), by length first, then kind, prompt and index."""

import pytest

from speechalign.preference_store.schema import Sample
from speechalign.tasks.decode import decode_order

pytestmark = pytest.mark.pure


def test_every_kind_the_rounds_and_the_final_evaluation_write_is_ordered_by_length_then_kind():
    rows = [("test", 3, 0, [1, 2, 3]), ("rollout", 1, 5, [4, 5]), ("heldout", 2, 1, [6, 7, 8]),
            ("golden", 2, 0, [9]), ("candidate", 1, 0, [1, 2]), ("probe", 4, 0, [3, 4, 5])]
    samples = [Sample(kind=kind, prompt_id=prompt, k=k, tokens=tokens) for kind, prompt, k, tokens in rows]
    ordered = decode_order(samples, lambda s: s.tokens)
    assert [(s.kind, s.prompt_id) for s in ordered] == [
        ("golden", 2), ("candidate", 1), ("rollout", 1), ("heldout", 2), ("probe", 4), ("test", 3)]
