"""The acoustic stage (layer-1 units -> the latent of all RVQ layers) and the synthesizer (units -> audio)."""

import numpy as np
import pytest

from speechalign.bootstrap.demo_corpus import speak
from speechalign.models.speechtokenizer.acoustic import AcousticConfig, latent_error, load_acoustic, train_acoustic
from speechalign.models.speechtokenizer.codec import encode
from speechalign.models.speechtokenizer.synthesizer import Synthesizer

SENTENCES = ["The old farmer found a red box.", "My sister painted the wooden chair.",
             "A young pilot opened the narrow window.", "The baker sold two golden clocks."]


@pytest.fixture(scope="module")
def golden(codec):
    voices = ["en-us+m3", "en-gb+f3"]
    wavs = [speak(t, v, 175, 16000) for t in SENTENCES for v in voices]
    return encode(codec, wavs), [v for _ in SENTENCES for v in voices]


def test_the_acoustic_stage_learns_the_latent_of_all_layers_from_layer_1_and_the_speaker(codec, golden, tmp_path):
    codes, speakers = golden
    synth = Synthesizer(codec, None)
    latents = synth.code_latents(codes)
    assert latents[0].shape == (codec.quantizer.dimension, codes[0].shape[1])
    config = AcousticConfig(latent_dim=codec.quantizer.dimension, dim=64, layers=1, heads=2,
                            speakers=sorted(set(speakers)))
    model, report = train_acoustic([c[0] for c in codes], latents, speakers, config, steps=400, seed=0,
                                   batch_size=8, crop_frames=80, lr=3e-3)
    units = [c[0].tolist() for c in codes]
    predicted = model.predict(units, speakers)
    layer1 = synth.code_latents([c[:1] for c in codes])  # what decoding layer 1 alone gives the decoder
    assert latent_error(predicted, latents) < 0.8 * latent_error(layer1, latents)
    assert report["history"][-1]["loss"] < report["history"][0]["loss"]

    model.save(tmp_path / "acoustic", report)
    again = load_acoustic(tmp_path / "acoustic")
    first, second = model.predict(units[:3], speakers[:3]), again.predict(units[:3], speakers[:3])
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert [p.shape for p in first] == [(codec.quantizer.dimension, len(u)) for u in units[:3]]


def test_synthesizer_makes_a_wav_per_sequence_in_both_modes(codec, golden):
    codes, speakers = golden
    from speechalign.models.speechtokenizer.acoustic import AcousticStage

    units = [codes[0][0].tolist(), [], codes[1][0][:7].tolist()]
    for acoustic in (None, AcousticStage(AcousticConfig(latent_dim=codec.quantizer.dimension, dim=32, layers=1,
                                                        heads=2))):
        wavs = Synthesizer(codec, acoustic).synthesize(units, speakers[:3], batch_size=2)
        assert [len(w) for w in wavs] == [len(u) * 320 for u in units]  # 50 frames per second at 16 kHz
        assert wavs[0].dtype == np.float32 and np.abs(wavs[0]).max() > 1e-3
    # batching pads the shorter sequence; the decoder looks ahead only a few frames, so only its end changes
    short, long = sorted(codes[:2], key=lambda c: c.shape[1])
    alone = Synthesizer(codec, None).decode_codes([short])[0]
    together = Synthesizer(codec, None).decode_codes([short, long], batch_size=2)[0]
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
