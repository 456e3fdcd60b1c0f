"""The codec: the shipped demo SpeechTokenizer loads from its official config + checkpoint and
gives layer-1 codes that follow what is said."""

import numpy as np
import torch
from rapidfuzz.distance import Levenshtein
from speechtokenizer import SpeechTokenizer

from speechalign.bootstrap.demo_corpus import speak
from speechalign.config import Config
from speechalign.models.speechtokenizer.codec import DEMO_CODEC_CONFIG, decode, encode, fit_codebooks, load_codec

# models/demo_codec/MODEL_CARD.md, "codec, 8 layers" on 40 held-out demo utterances
CARD = {"speaker_similarity": 0.928, "mcd_db": 1.40, "ovrl_gap": 2.80 - 2.47}


def test_shipped_codec_loads_with_the_official_loader_format():
    config_path, checkpoint_path = Config().codec.files()
    codec = load_codec(config_path, checkpoint_path)
    assert isinstance(codec, SpeechTokenizer)
    assert (codec.sample_rate, codec.n_q, int(codec.downsample_rate), codec.quantizer.bins) == (16000, 8, 320, 1024)


def test_encode_a_fresh_utterance(codec):
    audio = speak("The quiet child carried a green lamp.", "en-us+m3", 175, 16000)
    (codes,) = encode(codec, [audio])
    assert codes.shape == (8, int(np.ceil(len(audio) / 320)))
    assert len(np.unique(codes[0])) > 10  # not the all-zero codes of an unfitted codebook
    assert codes[0].max() < 1024
    waveform = decode(codec, codes)
    assert waveform.shape[0] == codes.shape[1] * 320


def test_layer1_codes_follow_the_words_not_the_waveform(codec):
    """The same sentence said twice by one voice encodes alike; a different sentence does not."""
    a = speak("My sister fixed two round clocks.", "en-us+m3", 175, 16000)
    b = speak("Nobody washed the boat at noon.", "en-us+m3", 175, 16000)
    shifted = np.concatenate([np.zeros(160, dtype=np.float32), a])  # half a frame later
    ca, cs, cb = (c[0].tolist() for c in encode(codec, [a, shifted, b]))
    assert Levenshtein.normalized_distance(ca, cs) < Levenshtein.normalized_distance(ca, cb)


def test_fitting_codebooks_turns_all_zero_codes_into_meaningful_ones():
    """A random SpeechTokenizer codes every frame as 0 (its codebooks start at zero); fitted codebooks do not."""
    config = {**DEMO_CODEC_CONFIG, "n_q": 2, "codebook_size": 64}
    torch.manual_seed(0)
    codec = SpeechTokenizer(config).eval()
    wavs = [speak(t, "en-gb+f3", 175, 16000) for t in ("Open the window.", "Where is the map?", "Bring two chairs.")]
    before = encode(codec, wavs)
    assert all((c == 0).all() for c in before)
    usage = fit_codebooks(codec, wavs, seed=0, layer1_codes=16)
    after = encode(codec, wavs)
    assert usage["codes_used_per_layer"][0] == 16
    assert len(np.unique(np.concatenate([c[0] for c in after]))) > 8
    assert all(c[0].max() < 16 for c in after)  # layer 1 only produces its fitted centroids


def test_the_shipped_codec_reconstructs_a_fresh_utterance_as_its_model_card_says(codec):
    """Encode + decode a sentence the codec never heard; the figures are the model card's, with a tolerance."""
    from speechalign.models.speechtokenizer import audio_quality as aq

    audio = speak("The clever student borrowed a shiny kettle behind the school.", "en-gb+f3", 175, 16000)
    recon = decode(codec, encode(codec, [audio])[0])
    noise = aq.white_noise_like(audio)
    assert aq.speaker_similarity(audio, recon) >= CARD["speaker_similarity"] - 0.08
    assert aq.speaker_similarity(audio, recon) > aq.speaker_similarity(audio, noise) + 0.15
    assert aq.mel_cepstral_distortion(audio, recon) <= CARD["mcd_db"] + 0.6
    assert aq.log_mel_l1(audio, recon) < aq.log_mel_l1(audio, noise) / 2
    assert aq.dnsmos(recon)["ovrl"] >= aq.dnsmos(audio)["ovrl"] - CARD["ovrl_gap"] - 0.35
