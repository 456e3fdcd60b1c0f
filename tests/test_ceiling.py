"""The ceiling (bootstrap/ceiling.py): scored once per scoring setup, read again without scoring, and one bad
recording costs only its own values."""

import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import update

from speechalign.bootstrap.ceiling import measure_ceiling, scoring_fingerprint
from speechalign.preference_store.schema import CeilingScore, Prompt
from speechalign.preference_store.store import open_store
from tests.conftest import light_scoring


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_bad_recording_costs_only_its_own_ceiling_values(bootstrapped, tmp_path):
    cfg = light_scoring(bootstrapped)  # another scoring setup than bootstrap's: its ceiling is not stored yet
    store = open_store(cfg.store_url)
    assert not store.ceiling_scores(scoring_fingerprint(cfg))
    heldout = store.prompts("heldout")
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(800, np.float32), 16000)  # 0.05 s: DNSMOS needs 0.1 s
    with store.session() as s:
        s.execute(update(Prompt).where(Prompt.id == heldout[0].id).values(golden_audio_path=str(short)))

    ceiling = measure_ceiling(cfg, store)
    found = store.ceiling_scores(scoring_fingerprint(cfg))
    bad = found[("recording", heldout[0].id)]
    assert bad["dnsmos_ovrl"] is None and bad["unit_edit_distance"] == 0.0
    with store.session() as s:
        [error] = [row.error for row in s.query(CeilingScore).filter_by(
            prompt_id=heldout[0].id, kind="recording", metric="dnsmos_ovrl", scoring=scoring_fingerprint(cfg))]
    assert "short.wav" in error and "0.1 s" in error  # names the file and what it lacks
    for p in heldout[1:]:  # every other recording, and every golden token sequence, has its values
        assert found[("recording", p.id)]["dnsmos_ovrl"] is not None
    assert all(found[("golden_tokens", p.id)]["dnsmos_ovrl"] is not None for p in heldout)
    assert ceiling["recording"]["unit_edit_distance"] == 0.0 and ceiling["golden_tokens"]["length_ratio"] == 1.0

    rows = store.count(CeilingScore)
    assert measure_ceiling(cfg, store) == ceiling and store.count(CeilingScore) == rows  # read, not scored again
