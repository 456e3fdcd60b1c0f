"""Importing a corpus: every bad row is named, recorded and skipped or repaired; the rest goes on."""

import json

import numpy as np
import soundfile as sf

from speechalign.bootstrap.demo_corpus import speak
from speechalign.bootstrap.import_corpus import assign_splits, import_corpus


def _bad_manifest(tmp_path, espeak_corpus):
    good = [json.loads(line) for line in espeak_corpus.read_text().splitlines()][:6]
    voice = speak("A stereo recording at another rate.", "en-us+m3", 175, 44100)
    sf.write(tmp_path / "stereo44k.wav", np.stack([voice, voice * 0.5], axis=1), 44100)
    sf.write(tmp_path / "empty.wav", np.zeros((0,), dtype=np.float32), 16000)
    (tmp_path / "garbage.wav").write_bytes(b"this is not audio at all")
    sf.write(tmp_path / "short.wav", speak("Hi.", "en-us+m3", 175, 16000)[:800], 16000)
    lines = [json.dumps({**g, "audio": str(espeak_corpus.parent / g["audio"])}) for g in good]
    lines += [
        json.dumps({"id": "stereo", "text": "A stereo recording at another rate.", "audio": "stereo44k.wav"}),
        json.dumps({"id": "missing", "text": "No file.", "audio": "nowhere.wav"}),
        json.dumps({"id": "empty", "text": "Empty audio.", "audio": "empty.wav"}),
        json.dumps({"id": "garbage", "text": "Unreadable audio.", "audio": "garbage.wav"}),
        json.dumps({"id": "notext", "text": "  ", "audio": "stereo44k.wav"}),
        json.dumps({"id": "short", "text": "Hi.", "audio": "short.wav"}),
        '{"id": "broken", "text": "unterminated',
        json.dumps({**good[0], "audio": str(espeak_corpus.parent / good[0]["audio"])}),  # duplicate id
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_bad_rows_are_recorded_and_the_rest_is_imported(tmp_path, espeak_corpus, codec, store):
    manifest = _bad_manifest(tmp_path, espeak_corpus)
    result = import_corpus(store, codec, manifest, min_seconds=0.3, max_seconds=20.0, heldout_fraction=0.2,
                           split_seed=0, repaired_dir=tmp_path / "repaired")
    assert result["imported"] == 7  # six good rows and the repaired stereo one
    issues = {(i.line, i.utterance_id, i.action): i.problem for i in store.import_issues()}
    assert (7, "stereo", "downmixed") in issues and (7, "stereo", "resampled") in issues
    assert "does not exist" in issues[(8, "missing", "skipped")]
    assert "empty or silent" in issues[(9, "empty", "skipped")]
    assert "unreadable" in issues[(10, "garbage", "skipped")]
    assert "empty text" in issues[(11, "notext", "skipped")]
    assert "outside [0.3, 20.0]" in issues[(12, "short", "skipped")]
    assert "malformed JSON" in issues[(13, None, "skipped")]
    assert "duplicate id" in issues[(14, good_id(espeak_corpus), "skipped")]
    stereo = next(p for p in store.prompts() if p.utterance_id == "stereo")
    audio, rate = sf.read(stereo.golden_audio_path)
    assert rate == 16000 and audio.ndim == 1  # the repaired copy is what the store points at
    assert len(stereo.golden_tokens) == 8 and len(stereo.golden_tokens[0]) == stereo.num_frames
    assert abs(stereo.num_frames - len(audio) / 320) <= 1
    # a second import of the same manifest adds nothing and records nothing twice
    again = import_corpus(store, codec, manifest, 0.3, 20.0, 0.2, 0, tmp_path / "repaired")
    assert again["imported"] == 0 and len(store.prompts()) == 7
    assert len(store.import_issues()) == len(issues)


def good_id(espeak_corpus):
    return json.loads(espeak_corpus.read_text().splitlines()[0])["id"]


def test_split_holds_out_at_least_the_fraction_and_is_stable():
    ids = [f"u{i}" for i in range(300)]
    split = assign_splits(ids, 0.1, seed=3)
    assert sum(v == "heldout" for v in split.values()) == 30
    assert assign_splits(list(reversed(ids)), 0.1, seed=3) == split


def test_the_sft_split_comes_out_of_the_train_split_and_leaves_the_held_out_split_as_it_was():
    ids = [f"u{i}" for i in range(300)]
    plain, with_sft = assign_splits(ids, 0.1, seed=3), assign_splits(ids, 0.1, seed=3, sft_fraction=0.5)
    assert {u for u, s in with_sft.items() if s == "heldout"} == {u for u, s in plain.items() if s == "heldout"}
    assert sum(s == "sft" for s in with_sft.values()) == 135 and sum(s == "train" for s in with_sft.values()) == 135
    assert all(plain[u] == "train" for u, s in with_sft.items() if s == "sft")
