"""Codec plug-ins: the flattening of codes into the LM's units and back, each transformers codec kind on tiny real
models built here (tests/tiny_codecs.py), and a bootstrap and a round on each, with a tiny Llama whose tokenizer
already holds that model's unit tokens (Llasa's format for xcodec2, NeuTTS's for neucodec)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from speechalign.config import load_config
from speechalign.models.codecs import Flattening

FORMATS = {  # the [model] knobs of each kind's test model
    "xcodec2": {"unit_token": "<|s_{}|>", "speech_start": "<|SPEECH_GENERATION_START|>",
                "speech_end": "<|SPEECH_GENERATION_END|>",
                "prompt_template": "chat_template:Convert the text to speech:<|TEXT_UNDERSTANDING_START|>{text}"
                                   "<|TEXT_UNDERSTANDING_END|>"},
    "neucodec": {"unit_token": "<|speech_{}|>", "speech_start": "<|SPEECH_GENERATION_START|>",
                 "speech_end": "<|SPEECH_GENERATION_END|>",
                 "prompt_template": "user: Convert the text to speech:<|TEXT_PROMPT_START|>{phonemes}"
                                    "<|TEXT_PROMPT_END|>\nassistant:{speech_start}"},
    "mimi": {"unit_token": "<|audio_{}|>", "speech_start": "<|audio_start|>", "speech_end": "<|audio_end|>",
             "prompt_template": "{text}{speech_start}"},
    "dac": {"unit_token": "<a{}>", "speech_start": "<sosp>", "speech_end": "<eosp>",
            "prompt_template": "{text}{speech_start}"},
    "encodec": {"unit_token": "<a{}>", "speech_start": "<sosp>", "speech_end": "<eosp>",
                "prompt_template": "{text}{speech_start}"},
}
CODEBOOKS = {"xcodec2": 1, "neucodec": 1, "mimi": 2, "dac": 2, "encodec": 2}
# units of the test corpus's longest utterance (6 rows) at k codebooks, and one to spare: bootstrap refuses a
# generate.max_new_tokens that would cut it; a tiny random model rarely stops early, so this is what a round generates
MAX_NEW_TOKENS = {"xcodec2": 160, "neucodec": 160, "mimi": 90, "dac": 310, "encodec": 460}
# Llama 3's chat template, as Llasa's tokenizer (a Llama 3.2 one) renders a user message and the assistant's header
LLAMA3_CHAT = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
               "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


# ---- the flattening -------------------------------------------------------------------------------------------


@pytest.mark.pure
def test_flattening_interleaves_codebooks_with_offsets_frame_after_frame():
    codes = np.array([[5, 6, 7], [1, 0, 3]])  # 2 codebooks x 3 frames, 8 codes each
    fl = Flattening(2, 8)
    assert fl.units == 16
    assert fl.flatten(codes) == [5, 8 + 1, 6, 8 + 0, 7, 8 + 3]
    assert (fl.unflatten(fl.flatten(codes)) == codes).all()
    assert Flattening(1, 8).flatten(codes) == [5, 6, 7]  # k = 1: the first codebook as it is (SpeechTokenizer)
    assert Flattening(2, 8).flatten(np.vstack([codes, [[2, 2, 2]]])) == fl.flatten(codes)  # only the first k


@pytest.mark.pure
def test_flatten_and_unflatten_are_inverse_and_a_cut_frame_is_trimmed():
    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 8):
        fl = Flattening(k, 1024)
        codes = rng.integers(0, 1024, (k, 37))
        units = fl.flatten(codes)
        assert len(units) == 37 * k and max(units) < fl.units
        assert (fl.unflatten(units) == codes).all()
        for cut in range(1, k):  # a sequence cut mid-frame: the incomplete last frame is dropped
            assert (fl.unflatten(units[:-cut]) == codes[:, :-1]).all()
            assert fl.whole_frames(units[:-cut]) == 36
    assert Flattening(3, 16).unflatten([]).shape == (3, 0)
    assert Flattening(3, 16).unflatten([4, 17]).shape == (3, 0)  # less than a frame: nothing to decode


@pytest.mark.pure
def test_a_unit_of_the_wrong_codebook_or_outside_the_vocabulary_is_refused():
    fl = Flattening(2, 8)
    with pytest.raises(ValueError, match="at position 1 belongs to codebook 0, where codebook 1's unit is due"):
        fl.unflatten([3, 4, 5, 9])
    with pytest.raises(ValueError, match="outside the LM's units"):
        fl.unflatten([3, 16])
    with pytest.raises(ValueError, match="first 2 codebooks"):
        fl.flatten(np.zeros((1, 4), dtype=int))


@pytest.mark.pure
def test_codec_knobs_are_checked_when_the_config_loads():
    from speechalign.config import ConfigError

    with pytest.raises(ConfigError, match="needs codec.path"):
        load_config(overrides=['codec.kind="mimi"'])
    with pytest.raises(ConfigError, match="codec.codebooks = 1 for xcodec2"):
        load_config(overrides=['codec.kind="xcodec2"', 'codec.path="/x"', "codec.codebooks=2"])
    with pytest.raises(ConfigError, match="codec.codebooks = 1 for speechtokenizer"):
        load_config(overrides=["codec.codebooks=2"])
    with pytest.raises(ConfigError, match="model.deduplicate = true needs codec.codebooks = 1"):
        load_config(overrides=['codec.kind="mimi"', 'codec.path="/x"', "codec.codebooks=2", "model.deduplicate=true"])
    with pytest.raises(ConfigError, match="codec.kind = 'snac'; it can be 'speechtokenizer', 'xcodec2'"):
        load_config(overrides=['codec.kind="snac"'])


@pytest.mark.pure
def test_the_example_configs_load():
    root = Path(__file__).resolve().parent.parent / "examples"
    llasa, neutts = load_config(root / "llasa.toml"), load_config(root / "neutts.toml")
    assert (llasa.codec.kind, llasa.model.unit_token, llasa.model.sft_epochs) == ("xcodec2", "<|s_{}|>", 0)
    assert (neutts.codec.kind, neutts.model.unit_token) == ("neucodec", "<|speech_{}|>")


@pytest.mark.pure
def test_llasa_and_neutts_prompts_are_their_own(tmp_path):
    from speechalign.models.codec_lm import SpeechFormat, phonemes

    tokenizer = unit_tokenizer(FORMATS["xcodec2"], 16)
    llasa = SpeechFormat(**FORMATS["xcodec2"], speaker_in_prompt=False)
    assert llasa.prompt("Hello there.", None, tokenizer) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nConvert the text to speech:"
        "<|TEXT_UNDERSTANDING_START|>Hello there.<|TEXT_UNDERSTANDING_END|><|eot_id|><|start_header_id|>assistant"
        "<|end_header_id|>\n\n<|SPEECH_GENERATION_START|>")
    # what Llasa's own code gives: the assistant message holding speech_start, continued
    assert llasa.prompt("Hello there.", None, tokenizer) == tokenizer.apply_chat_template(
        [{"role": "user", "content": "Convert the text to speech:<|TEXT_UNDERSTANDING_START|>Hello there."
                                     "<|TEXT_UNDERSTANDING_END|>"},
         {"role": "assistant", "content": "<|SPEECH_GENERATION_START|>"}], tokenize=False,
        continue_final_message=True)
    neutts = SpeechFormat(**FORMATS["neucodec"], speaker_in_prompt=False)
    assert phonemes("Hello world") == "həlˈoʊ wˈɜːld"
    assert neutts.prompt("Hello world", None) == ("user: Convert the text to speech:<|TEXT_PROMPT_START|>həlˈoʊ "
                                                   "wˈɜːld<|TEXT_PROMPT_END|>\nassistant:<|SPEECH_GENERATION_START|>")


# ---- tiny real codecs -------------------------------------------------------------------------------------------


def tiny_codec(tmp_path_factory, kind: str) -> Path:
    from tests.conftest import built_once
    from tests.tiny_codecs import build_codec

    return built_once(tmp_path_factory, f"codec-{kind}", lambda folder: build_codec(kind, folder))


@pytest.mark.parametrize("kind", list(CODEBOOKS))
def test_encode_flatten_unflatten_decode(tmp_path_factory, kind):
    from speechalign.bootstrap.demo_corpus import speak
    from speechalign.models.codecs import codec_flattening, open_codec

    path = tiny_codec(tmp_path_factory, kind)
    k = CODEBOOKS[kind]
    cfg = load_config(overrides=[f'codec.kind="{kind}"', f'codec.path="{path}"', f"codec.codebooks={k}"],
                      workdir=str(tmp_path_factory.mktemp("w")))
    codec = open_codec(cfg)
    assert codec.kind == kind and codec.flattening == codec_flattening(cfg.codec)  # the config alone says the same
    wavs = [speak(t, "en-us+m3", 175, codec.sample_rate) for t in ("Open the window.", "Where is the old map?")]
    codes = codec.encode(wavs)
    for wav, c in zip(wavs, codes):
        assert c.shape[0] == codec.codebooks and abs(c.shape[1] - len(wav) / codec.hop) <= 1.5
        assert 0 <= c.min() and c.max() < codec.codebook_size and len(np.unique(c[0])) > 5  # varied codes
    assert [c.tolist() for c in codec.encode(wavs[::-1])] == [c.tolist() for c in codes[::-1]]  # not the batch's
    units = [codec.flattening.flatten(c) for c in codes]
    assert all(len(u) == c.shape[1] * k and max(u) < codec.flattening.units for u, c in zip(units, codes))
    assert all((codec.flattening.unflatten(u) == c[:k]).all() for u, c in zip(units, codes))
    audio = codec.synthesize_each(units + [units[0][:-1]], [None] * 3)  # the last cut one unit short: a frame less
    frames = [c.shape[1] for c in codes]
    for wav, n in zip(audio, frames + [frames[0] - 1]):
        assert isinstance(wav, np.ndarray) and wav.dtype == np.float32 and np.isfinite(wav).all()
        assert 0.95 * n * codec.output_sample_rate / codec.frame_rate <= len(wav) <= n * codec.output_sample_rate \
            / codec.frame_rate
    if k > 1:  # a unit of the wrong codebook costs only its own sequence
        bad = codec.synthesize_each([units[0], [units[0][1]] + units[0][1:]], [None, None])
        assert isinstance(bad[0], np.ndarray) and isinstance(bad[1], ValueError)
    assert codec.output_sample_rate == (24000 if kind in ("neucodec", "mimi", "encodec") else 16000)


# ---- a bootstrap and a round on each ----------------------------------------------------------------------------


def unit_tokenizer(fmt: dict, units: int):
    """A tokenizer whose vocabulary holds the format's speech tokens, the prompt's own special tokens and characters,
    with Llama 3's chat template (as a Llasa or NeuTTS tokenizer holds its units: no token to add)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from speechalign.models.codec_lm import TEXT_SYMBOLS

    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                "<|TEXT_UNDERSTANDING_START|>", "<|TEXT_UNDERSTANDING_END|>", "<|TEXT_PROMPT_START|>",
                "<|TEXT_PROMPT_END|>", fmt["speech_start"], fmt["speech_end"]]
    chars = sorted(set(TEXT_SYMBOLS + list("ABCDEFGHIJKLMNOPQRSTUVWXYZ\n_|ˈˌːəɪʊɛæʌɔɑɜɹðθŋʃʒʤʧɡɐɚᵻɾʔ")))
    vocab = list(dict.fromkeys(["<pad>", "<unk>", *specials, *chars, *(fmt["unit_token"].format(i)
                                                                        for i in range(units))]))
    core = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"<[^>]+>|."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.add_tokens(["Convert the text to speech:", "user", "assistant"])  # as a BPE vocabulary would: shorter
    tokenizer.chat_template = LLAMA3_CHAT                                      # prompts, cheaper logits
    return tokenizer


def unit_llama(folder: Path, fmt: dict, units: int) -> Path:
    """A tiny Llama and its tokenizer, saved as a user's model would be."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = unit_tokenizer(fmt, units)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                 max_position_embeddings=1024, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", list(CODEBOOKS))
def test_bootstrap_and_a_round_on_each_transformers_codec(tmp_path, tmp_path_factory, espeak_corpus, kind):
    import soundfile as sf

    from speechalign.flows.bootstrap import bootstrap
    from speechalign.flows.campaign import alignment_campaign
    from speechalign.models.codec_lm import load_codec_lm
    from speechalign.models.codecs import codec_flattening, open_codec
    from speechalign.preference_store.store import open_store
    from speechalign.runtime.preflight import prepare
    from tests.conftest import LIGHT_SCORING, tiny_config

    path = tiny_codec(tmp_path_factory, kind)
    rows = [json.loads(line) for line in espeak_corpus.read_text().splitlines()[:6]]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({**r, "audio": str(espeak_corpus.parent / r["audio"])}) + "\n"
                                for r in rows))
    k, fmt = CODEBOOKS[kind], FORMATS[kind]
    codec_knobs = [f'codec.kind="{kind}"', f'codec.path="{path}"', f"codec.codebooks={k}"]
    probe = open_codec(load_config(overrides=codec_knobs), acoustic=False)
    user = unit_llama(tmp_path / "lm", fmt, probe.flattening.units)
    cfg = tiny_config(tmp_path / "work", f"sqlite:///{tmp_path / 'store.db'}", manifest, *codec_knobs,
                      f'model.base_model="{user}"', "model.sft_epochs=0", "model.speaker_in_prompt=false",
                      *(f"model.{key}={json.dumps(value)}" for key, value in fmt.items()), "prefect.task_retries=0",
                      f"generate.max_new_tokens={MAX_NEW_TOKENS[kind]}", "corpus.heldout_fraction=0.25",
                      "evaluate.probe_prompts=1",
                      *LIGHT_SCORING[:2], 'score.heldout_metrics=["speaker_similarity"]', LIGHT_SCORING[2])
    prepare(cfg)
    result = bootstrap(str(cfg.workdir))
    assert result["import"]["imported"] == 6 and result["metadata"]["added_tokens"] == 0
    assert result["acoustic"]["acoustic"] is None and not cfg.layout.acoustic.exists()  # decoded directly
    store = open_store(cfg.store_url)
    issues = store.import_issues()
    assert len(issues) == (6 if probe.sample_rate != 16000 else 0)  # the 16 kHz corpus resampled for a 24 kHz codec
    assert all(i.action == "resampled" and f"to the codec's {probe.sample_rate} Hz" in i.problem for i in issues)
    prompt = store.prompts()[0]
    assert len(prompt.golden_tokens) == probe.codebooks and len(prompt.golden_tokens[0]) == prompt.num_frames
    assert result["ceiling"]["golden_tokens"]["dnsmos_ovrl"] > 0  # the golden tokens decoded and heard
    [summary] = alignment_campaign(str(cfg.workdir), rounds=1)
    assert summary.round == 1
    flattening = codec_flattening(cfg.codec)
    rnd = store.round_number(store.campaign(cfg.campaign.name).id, 1)
    prompts = {p.id: p for p in store.prompts()}
    golden = [s for s in store.samples(rnd.id) if s.kind == "golden"]
    assert golden and all(s.tokens == flattening.flatten(prompts[s.prompt_id].golden_tokens) for s in golden)
    heldout = store.samples(rnd.id, "heldout")
    assert heldout and all(s.audio_path for s in heldout)
    for s in heldout:
        units = s.tokens
        assert all(u // flattening.codebook_size == i % k for i, u in enumerate(units))  # the frame's order
        assert not s.finished or len(units) % k == 0  # a finished sample is whole frames
    assert {sf.info(s.audio_path).samplerate for s in heldout} == {probe.output_sample_rate}
    scores = store.scores(rnd.id, "heldout")  # DNSMOS heard the codec's WAVs (an empty one is an error)
    assert any(v.get("dnsmos_ovrl") is not None for v in scores.values())
    # the recording at the codec's input rate against the 16 kHz original: the same voice (each read at its own rate);
    # a random tiny codec's samples have no voice in them that resemblyzer's voice detector keeps
    assert result["ceiling"]["recording"]["speaker_similarity"] > 0.99
    policy = load_codec_lm(cfg.layout.policy(1))
    assert policy.codebook_size == flattening.units and policy.format.unit_token == fmt["unit_token"]


# ---- SpeechTokenizer: the demo's path, unchanged ------------------------------------------------------------------


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_speechtokenizer_through_the_plug_in_is_the_codec_as_it_was(tmp_path, espeak_corpus, codec, store):
    """Golden tokens imported through the plug-in are the codec's direct encoding, its units are layer 1's codes, and
    its WAVs are the Synthesizer's, digit for digit, with the shipped acoustic stage and without."""
    import soundfile as sf

    from speechalign.bootstrap.import_corpus import import_corpus
    from speechalign.bootstrap.shipped import SHIPPED
    from speechalign.config import Config
    from speechalign.models.codecs import codec_flattening, golden_units
    from speechalign.models.codecs.speechtokenizer import SpeechTokenizerCodec
    from speechalign.models.speechtokenizer.acoustic import load_acoustic
    from speechalign.models.speechtokenizer.codec import encode
    from speechalign.models.speechtokenizer.synthesizer import Synthesizer

    rows = [json.loads(line) for line in espeak_corpus.read_text().splitlines()[:4]]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({**r, "audio": str(espeak_corpus.parent / r["audio"])}) + "\n"
                                for r in rows))
    plug_in = SpeechTokenizerCodec.load(*Config().codec.files())
    import_corpus(store, plug_in, manifest, 0.3, 20.0, 0.0, 0, tmp_path / "repaired")
    wavs = [sf.read(espeak_corpus.parent / r["audio"], dtype="float32")[0] for r in rows]
    direct = encode(codec, wavs)
    prompts = {p.utterance_id: p for p in store.prompts()}
    assert [prompts[r["id"]].golden_tokens for r in rows] == [c.tolist() for c in direct]
    flattening = codec_flattening(Config().codec)
    assert flattening == plug_in.flattening == Flattening(1, 1024)
    units = [golden_units(prompts[r["id"]].golden_tokens, flattening) for r in rows]
    assert units == [c[0].tolist() for c in direct]
    speakers = [r.get("speaker") for r in rows]
    stage = load_acoustic(SHIPPED / "demo_codec" / "acoustic")
    for acoustic in (None, stage):
        ours = SpeechTokenizerCodec(codec, acoustic).synthesize_each(units, speakers, 2)
        before = Synthesizer(codec, acoustic).synthesize_each(units, speakers, 2)
        assert all(np.array_equal(a, b) for a, b in zip(ours, before))


def test_the_metrics_read_each_wav_at_its_own_rate(tmp_path):
    """The same speech written at 16 and 24 kHz (as a 24 kHz codec's samples are) scores alike: Whisper, DNSMOS and
    speaker similarity each resample the file from the rate it says."""
    import soundfile as sf

    from speechalign.bootstrap.demo_corpus import speak
    from speechalign.models.metrics import ScoreItem, get_metric

    text = "Please bring the red box to the kitchen."
    paths = []
    for rate in (16000, 24000):
        sf.write(tmp_path / f"{rate}.wav", speak(text, "en-us+m3", 175, rate), rate, subtype="PCM_16")
        paths.append(str(tmp_path / f"{rate}.wav"))
    items = [ScoreItem([], [], text, p, paths[0]) for p in paths]
    asr = get_metric("asr").score(items)
    assert asr[0] == asr[1]
    dnsmos = get_metric("dnsmos").score(items)
    assert abs(dnsmos[0]["dnsmos_ovrl"] - dnsmos[1]["dnsmos_ovrl"]) < 0.1
    speaker = get_metric("speaker_similarity").score(items)
    assert speaker[0]["speaker_similarity"] > 0.999 and speaker[1]["speaker_similarity"] > 0.98
