"""The audio metric plug-ins on real espeak speech made on the spot: the batched DNSMOS gives speechmos's
values clip by clip, the batched speaker similarity gives resemblyzer's embed_utterance similarity, and
both tell speech from what is not."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from speechalign.bootstrap.demo_corpus import speak
from speechalign.models.audio import resample
from speechalign.models.metrics import ScoreItem
from speechalign.models.metrics.dnsmos import Dnsmos, repeat_pad, window_starts
from speechalign.models.metrics.speaker import SpeakerSimilarity
from speechalign.models.speechtokenizer import audio_quality as aq

TEXT = "The tired doctor opened the wooden window this morning."
OTHER = "Where did you put the golden map?"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Golden recordings at 22.05 kHz (as users' recordings may be), samples as 16 kHz WAVs."""
    root = tmp_path_factory.mktemp("audio-metrics")
    wavs = {
        "golden": speak(TEXT, "en-us+m3", 175, 22050),
        "other_golden": speak(OTHER, "en-gb+f3", 175, 22050),
        "same_voice": speak(TEXT, "en-us+m3", 195, 16000),
        "other_voice": speak(TEXT, "en-us+f3", 175, 16000),
        "other_text": speak(OTHER, "en-gb+f3", 160, 16000),
    }
    wavs["noise"] = np.clip(aq.white_noise_like(wavs["same_voice"]), -1, 1)
    paths = {}
    for name, wav in wavs.items():
        paths[name] = str(root / f"{name}.wav")
        sf.write(paths[name], wav, 22050 if "golden" in name else 16000, subtype="PCM_16")
    return paths


def read(path: str) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32")
    return resample(audio, rate, 16000)


def item(audio_path: str | None, golden_audio_path: str | None = None) -> ScoreItem:
    return ScoreItem(tokens=[1, 2], golden_tokens=[1, 2], text=TEXT, audio_path=audio_path,
                     golden_audio_path=golden_audio_path)


@pytest.fixture(scope="module")
def dnsmos_metric():
    return Dnsmos()


@pytest.fixture(scope="module")
def speaker_metric():
    return SpeakerSimilarity()


def test_batched_dnsmos_gives_speechmos_values_clip_by_clip(clips, dnsmos_metric):
    from speechmos import dnsmos

    speech = np.concatenate([read(clips["same_voice"]), read(clips["other_voice"])])
    cases = {  # each takes another route through the shared computation
        "2.2 s, 9 hops of which speechmos skips 2": speech[:35211],
        "1.6 s, whole codec frames: periodic": speech[:25600],
        "2.8 s, two windows": speech[:44811],
        "0.3 s, repeated 32 times": speech[8000:12800],
    }
    windows = {name: len(window_starts(len(repeat_pad(w)))) for name, w in cases.items()}
    assert list(windows.values()) == [7, 3, 2, 1]
    ours = dnsmos_metric.clips(list(cases.values()))
    for (name, wav), got in zip(cases.items(), ours):
        want = dnsmos.run(wav, 16000)
        for key in ("sig", "bak", "ovrl"):
            assert got[key] == pytest.approx(float(want[f"{key}_mos"]), abs=1e-3), (name, key)
    # the per-clip helper (models/speechtokenizer/report.py) is the same implementation
    assert aq.dnsmos(cases["2.8 s, two windows"]) == pytest.approx(ours[2], abs=1e-5)


def test_dnsmos_scores_white_noise_below_speech(clips, dnsmos_metric):
    speech, noise = dnsmos_metric.score([item(clips["same_voice"]), item(clips["noise"])])
    assert set(speech) == set(Dnsmos.outputs)
    assert speech["dnsmos_ovrl"] > noise["dnsmos_ovrl"] + 0.5
    assert speech["dnsmos_bak"] > noise["dnsmos_bak"] + 0.5


def test_batched_speaker_similarity_matches_embed_utterance(clips, speaker_metric):
    from resemblyzer import VoiceEncoder, preprocess_wav

    pairs = [("same_voice", "golden"), ("other_voice", "golden"), ("noise", "golden"), ("other_text", "other_golden")]
    got = speaker_metric.score([item(clips[s], clips[g]) for s, g in pairs])
    encoder = VoiceEncoder("cpu", verbose=False)
    embed = {name: encoder.embed_utterance(preprocess_wav(read(clips[name]), source_sr=16000))
             for name in {n for pair in pairs for n in pair}}
    for (s, g), values in zip(pairs, got):
        assert values["speaker_similarity"] == pytest.approx(float(np.dot(embed[s], embed[g])), abs=1e-4), s
    assert sorted(speaker_metric._golden) == sorted({clips["golden"], clips["other_golden"]})  # one embedding each
    # the per-clip helper is the same implementation
    assert aq.speaker_similarity(read(clips["same_voice"]), read(clips["golden"])) == pytest.approx(
        got[0]["speaker_similarity"], abs=1e-5)


def test_the_same_voice_scores_higher_than_another_voice(clips, speaker_metric):
    same, other, noise = (v["speaker_similarity"] for v in speaker_metric.score(
        [item(clips[name], clips["golden"]) for name in ("same_voice", "other_voice", "noise")]))
    assert same > other + 0.05
    assert other > noise


@pytest.mark.parametrize("metric", ["dnsmos", "speaker"])
def test_a_sample_without_audio_is_a_clear_error(clips, metric, dnsmos_metric, speaker_metric):
    m = dnsmos_metric if metric == "dnsmos" else speaker_metric
    with pytest.raises(ValueError, match=r"no audio.*decode stage must run first"):
        m.score([item(clips["same_voice"], clips["golden"]), item(None, clips["golden"])])


def test_dnsmos_names_the_length_of_a_clip_too_short(tmp_path, dnsmos_metric):
    path = tmp_path / "blip.wav"
    sf.write(path, np.full(800, 0.1, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(ValueError, match=r"0\.050 s .*at least 0\.1 s"):
        dnsmos_metric.score([item(str(path))])
