"""The shipped demo models are taken only for the recipe they were trained on (bootstrap/shipped.py)."""

import json
from types import SimpleNamespace

import pytest

from speechalign.bootstrap.shipped import NO_SHIPPED, recipe_fingerprint, take_shipped
from speechalign.config import load_config

pytestmark = pytest.mark.pure
TRAIN = [SimpleNamespace(utterance_id=f"demo-{i:04d}", speaker="en-us+m3") for i in range(5)]


def fingerprint(tmp_path, *overrides, train=TRAIN, settings=None):
    cfg = load_config(overrides=list(overrides), workdir=str(tmp_path))
    return recipe_fingerprint(cfg, settings or {"steps": 1000}, train)


def test_the_fingerprint_names_the_recipe_not_the_machine(tmp_path):
    same = fingerprint(tmp_path)
    assert fingerprint(tmp_path) == same  # a recipe is the same recipe on any machine: no golden tokens in it
    changed = [fingerprint(tmp_path, "demo.utterances=801"), fingerprint(tmp_path, "demo.speed=160"),
               fingerprint(tmp_path, "corpus.split_seed=1"), fingerprint(tmp_path, settings={"steps": 999}),
               fingerprint(tmp_path, train=TRAIN[:4])]
    assert same not in changed and len(set(changed)) == len(changed)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "text": "hi", "audio": "a.wav"}) + "\n")
    assert fingerprint(tmp_path, f"corpus.manifest={json.dumps(str(manifest))}") != same  # a user's corpus
    before = fingerprint(tmp_path, f"corpus.manifest={json.dumps(str(manifest))}")
    manifest.write_text(json.dumps({"id": "b", "text": "hi", "audio": "a.wav"}) + "\n")
    assert fingerprint(tmp_path, f"corpus.manifest={json.dumps(str(manifest))}") != before  # by its content


def test_a_shipped_model_is_copied_only_for_its_own_recipe(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "weights").write_text("w")
    assert not take_shipped("model", shipped, "abc", "abd", tmp_path / "miss")
    assert not (tmp_path / "miss").exists()
    assert not take_shipped("model", shipped, None, "abc", tmp_path / "none")
    assert take_shipped("model", shipped, "abc", "abc", tmp_path / "hit")
    assert (tmp_path / "hit" / "weights").read_text() == "w"
    monkeypatch.setenv(NO_SHIPPED, "1")  # remaking the shipped models: always train
    assert not take_shipped("model", shipped, "abc", "abc", tmp_path / "again")
