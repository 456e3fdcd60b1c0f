"""The acoustic stage (layer-1 units -> all RVQ layers) and the synthesizer that turns units into audio."""

import numpy as np
import pytest

from speechalign.models.acoustic import AcousticConfig, layer_accuracy, load_acoustic, train_acoustic
from speechalign.models.codec import encode
from speechalign.models.speech import Synthesizer
from speechalign.tasks.demo_corpus import speak

SENTENCES = ["The old farmer found a red box.", "My sister painted the wooden chair.",
             "A young pilot opened the narrow window.", "The baker sold two golden clocks."]


@pytest.fixture(scope="module")
def golden(codec):
    voices = ["en-us+m3", "en-gb+f3"]
    wavs = [speak(t, v, 175, 16000) for t in SENTENCES for v in voices]
    return encode(codec, wavs), [v for _ in SENTENCES for v in voices]


def test_the_acoustic_stage_learns_layer_2_from_layer_1_and_the_speaker(golden, tmp_path):
    codes, speakers = golden
    config = AcousticConfig(dim=64, layers=1, heads=2, speakers=sorted(set(speakers)))
    model, report = train_acoustic(codes, speakers, config, steps=400, seed=0, batch_size=8, crop_frames=80, lr=3e-3)
    layer2 = np.concatenate([c[1] for c in codes])
    majority = np.bincount(layer2).max() / len(layer2)  # always guessing the most common code
    accuracy = layer_accuracy(model, codes, speakers)
    assert accuracy[0] > majority + 0.05, (accuracy, majority)
    assert report["history"][-1]["loss"] < report["history"][0]["loss"]

    model.save(tmp_path / "acoustic", report)
    again = load_acoustic(tmp_path / "acoustic")
    units = [c[0].tolist() for c in codes[:3]]
    first, second = model.predict(units, speakers[:3]), again.predict(units, speakers[:3])
    assert all((a == b).all() for a, b in zip(first, second))
    assert all(p.shape == (8, len(u)) and (p[0] == u).all() for p, u in zip(first, units))


def test_synthesizer_makes_a_wav_per_sequence_in_both_modes(codec, golden):
    codes, speakers = golden
    from speechalign.models.acoustic import AcousticStage

    units = [codes[0][0].tolist(), [], codes[1][0][:7].tolist()]
    for acoustic in (None, AcousticStage(AcousticConfig(dim=32, layers=1, heads=2))):
        wavs = Synthesizer(codec, acoustic).synthesize(units, speakers[:3], batch_size=2)
        assert [len(w) for w in wavs] == [len(u) * 320 for u in units]  # 50 frames per second at 16 kHz
        assert wavs[0].dtype == np.float32 and np.abs(wavs[0]).max() > 1e-3
    # batching pads the shorter sequence; the decoder looks ahead only a few frames, so only its end changes
    short, long = sorted(codes[:2], key=lambda c: c.shape[1])
    alone = Synthesizer(codec, None).decode([short])[0]
    together = Synthesizer(codec, None).decode([short, long], batch_size=2)[0]
    assert short.shape[1] < long.shape[1] and len(alone) == len(together)
    assert np.allclose(alone[:-10 * 320], together[:-10 * 320], atol=1e-4)


def test_a_sequence_that_cannot_be_decoded_costs_only_itself(codec, golden):
    codes, speakers = golden
    synth = Synthesizer(codec, None)
    with pytest.raises(ValueError, match="unit 5000 is outside the codec's codebook"):
        synth.synthesize([[1, 5000, 2]], [None])
    good = codes[0][0].tolist()
    out = synth.synthesize_each([good, [1, 5000, 2], good[:5]], speakers[:3], batch_size=3)
    assert isinstance(out[1], ValueError) and "5000" in str(out[1])
    assert [len(out[0]), len(out[2])] == [len(good) * 320, 5 * 320]
