"""The preference store on SQLite and PostgreSQL: Alembic is the schema's only source, and every
write is exactly-once."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from speechalign.preference_store import migrate
from speechalign.preference_store.schema import Base, Pair, Sample, Score

pytestmark = pytest.mark.pure  # make test-fast


def test_migrations_reach_head_and_match_the_models(store, store_url):
    assert migrate.current_revision(store_url) == migrate.head_revision(store_url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == [], f"models and migrations disagree; add a migration: {diff}"
    assert migrate.upgrade(store_url) == migrate.head_revision(store_url)  # a second upgrade is a no-op


def _prompt(store, utt="u1", split="train"):
    store.add_prompts([{"utterance_id": utt, "text": "hello there", "speaker": "a", "golden_audio_path": "/x.wav",
                        "golden_tokens": [[1, 2, 3], [4, 5, 6]], "num_frames": 3, "duration_s": 0.06,
                        "split": split}])
    return next(p for p in store.prompts() if p.utterance_id == utt)


def test_retried_writes_write_nothing_twice(store):
    prompt = _prompt(store)
    _prompt(store)  # importing the same utterance again
    assert len(store.prompts()) == 1
    campaign = store.create_campaign("c", {"k": 1}, "/base")
    assert store.create_campaign("c", {"k": 1}, "/base").id == campaign.id
    rnd = store.open_round(campaign.id, 1, "/base")
    assert store.open_round(campaign.id, 1, "/base").id == rnd.id
    rows = [{"round_id": rnd.id, "prompt_id": prompt.id, "kind": "candidate", "k": k, "tokens": [k, 2],
             "finished": True, "seed": 1, "sampling": {"t": 1.0}} for k in range(3)]
    store.add_samples(rows)
    store.add_samples(rows)  # a retried generate stage
    assert store.count(Sample, round_id=rnd.id) == 3
    samples = store.samples(rnd.id)
    scores = [{"sample_id": s.id, "metric": "m", "value": 0.5, "error": None} for s in samples]
    store.add_scores(scores)
    store.add_scores(scores)
    assert store.count(Score) == 3
    pair = {"round_id": rnd.id, "prompt_id": prompt.id, "chosen_sample_id": samples[0].id,
            "rejected_sample_id": samples[1].id, "criterion": "golden_vs_synthetic", "margins": {"m": 0.1},
            "source": "auto"}
    store.add_pairs([pair])
    store.add_pairs([pair])
    assert store.count(Pair) == 1
    assert store.existing_sample_keys(rnd.id, "candidate") == {(prompt.id, 0), (prompt.id, 1), (prompt.id, 2)}


def test_stage_bookkeeping_and_round_resume(store):
    campaign = store.create_campaign("c", {}, "/base")
    rnd = store.open_round(campaign.id, 1, "/base")
    store.stage_started(rnd.id, "generate")
    store.stage_failed(rnd.id, "generate", "RuntimeError: boom")
    store.finish_round(rnd.id, "failed", error="RuntimeError: boom")
    assert store.round(rnd.id).status == "failed"
    resumed = store.open_round(campaign.id, 1, "/base")
    assert (resumed.id, resumed.status, resumed.error) == (rnd.id, "running", None)
    store.stage_started(rnd.id, "generate")
    store.stage_completed(rnd.id, "generate", {"candidates": 4}, 1.5)
    stage = store.stages(rnd.id)["generate"]
    assert (stage.status, stage.attempts, stage.result, stage.seconds) == ("completed", 2, {"candidates": 4}, 1.5)
    store.finish_round(rnd.id, "completed", policy_out="/p1")
    assert store.open_round(campaign.id, 1, "/base").status == "completed"  # a completed round stays completed
