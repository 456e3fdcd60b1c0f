"""Users' codec LMs in their own formats, built here with real tokenizer formats: a SpeechGPT-style Llama whose
sentencepiece vocabulary already holds <sosp>, <eosp> and <0>..<1023> (slow: tokenizer.model alone; fast:
tokenizer.json), a GPT-2 (other embedding module names), a model with a chat template; and the official
SpeechTokenizer format with a .pt checkpoint. A SpeechGPT-style model goes through bootstrap and a round."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from speechalign.models.codec_lm import SpeechFormat, load_codec_lm, load_user_model
from speechalign.models.sampling import Sampling, generate_units
from speechalign.tasks.train import embedding_module_names

CODES = 1024  # the demo codec's codebook: a SpeechGPT-style vocabulary holds every unit
SPEECHGPT = SpeechFormat(unit_token="<{}>", speech_start="<sosp>", speech_end="<eosp>",
                         prompt_template="[Human]: {text}<eoh> [SpeechGPT]: {speech_start}", speaker_in_prompt=False)
SENTENCES = ["[Human]: please bring the red box<eoh> [SpeechGPT]: <sosp><12><7><eosp>",
             "the quick brown fox jumps over the lazy dog.", "my sister fixed two round clocks yesterday."]


def speechgpt_llama(folder: Path, fast: bool) -> Path:
    """A tiny Llama with a sentencepiece tokenizer trained here whose vocabulary holds the speech tokens (as
    SpeechGPT's does); `fast`: saved as tokenizer.json, else the sentencepiece tokenizer.model alone."""
    import sentencepiece as spm

    folder.mkdir(parents=True)
    (folder / "corpus.txt").write_text("\n".join(SENTENCES * 40))
    symbols = ["<sosp>", "<eosp>", "<eoh>", *(f"<{i}>" for i in range(CODES))]
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "sp"),
                                   vocab_size=len(symbols) + 60, model_type="bpe", user_defined_symbols=symbols,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False,
                                   character_coverage=1.0, minloglevel=2)
    (folder / "sp.model").rename(folder / "tokenizer.model")
    for extra in ("sp.vocab", "corpus.txt"):
        (folder / extra).unlink()
    tokenizer = AutoTokenizer.from_pretrained(folder)  # from tokenizer.model
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         bos_token_id=1, eos_token_id=2, max_position_embeddings=512))
    model.save_pretrained(folder)
    if fast:
        tokenizer.save_pretrained(folder)
        (folder / "tokenizer.model").unlink()
    return folder


@pytest.mark.parametrize("fast", [False, True], ids=["slow-sentencepiece", "fast-tokenizer-json"])
def test_a_speechgpt_style_llama_is_used_as_it_is(tmp_path, fast):
    path = speechgpt_llama(tmp_path / "speechgpt", fast)
    assert (path / "tokenizer.json").is_file() == fast and (path / "tokenizer.model").is_file() != fast
    own = AutoModelForCausalLM.from_pretrained(path).get_input_embeddings().weight.detach().clone()
    lm = load_user_model(path, CODES, ["en-us+m3"], SPEECHGPT)
    assert lm.metadata["added_tokens"] == 0  # its format matches: nothing added, its own embeddings
    assert torch.equal(lm.model.get_input_embeddings().weight, own)
    prompt = lm.prompt("please bring the red box", "en-us+m3")  # speaker_in_prompt off: no speaker token
    assert prompt == "[Human]: please bring the red box<eoh> [SpeechGPT]: <sosp>"
    assert lm.tokenizer.unk_token_id not in lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert lm.completion([5, 5, 1023]) == "<5><5><1023><eosp>"
    [out] = generate_units(lm, [prompt], Sampling(max_new_tokens=20), [0])
    assert out.units and all(0 <= u < CODES for u in out.units)
    lm.save(tmp_path / "policy")
    again = load_codec_lm(tmp_path / "policy")
    assert again.format == SPEECHGPT and again.prompt("hi", None) == "[Human]: hi<eoh> [SpeechGPT]: <sosp>"
    # the demo's format on the same model: every <uN> is missing (its <sosp> and <eosp> are there)
    assert load_user_model(path, CODES, [], SpeechFormat(speaker_in_prompt=False)).metadata["added_tokens"] == CODES


def test_deduplicated_units_are_written_once_per_run():
    fmt = SpeechFormat(unit_token="<{}>", deduplicate=True)
    assert fmt.completion([5, 5, 5, 7, 7, 5]) == "<5><7><5><eosp>"
    from speechalign.models.codec_lm import expand_runs, mean_run

    assert mean_run([[1, 1, 1, 2], [3, 3]]) == pytest.approx(2.0)  # runs 3, 1, 2
    assert expand_runs([4, 9], 1.5) == [4, 4, 9]  # frame ends at round(1.5) = 2 and round(3.0) = 3


def test_a_chat_template_model_is_prompted_through_its_template(tmp_path):
    path = speechgpt_llama(tmp_path / "chat", fast=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}[{{ m['role'] }}]: {{ m['content'] }}<eoh> {% endfor %}"
                               "{% if add_generation_prompt %}[SpeechGPT]: {% endif %}")
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    lm = load_user_model(path, CODES, [], SpeechFormat(unit_token="<{}>", prompt_template="chat_template",
                                                       speaker_in_prompt=False))
    assert lm.metadata["added_tokens"] == 0
    assert lm.prompt("please bring the red box", None) == "[user]: please bring the red box<eoh> [SpeechGPT]: <sosp>"
    [out] = generate_units(lm, [lm.prompt("hello world", None)], Sampling(max_new_tokens=10), [1])
    assert all(0 <= u < CODES for u in out.units)
    plain = speechgpt_llama(tmp_path / "plain", fast=True)  # no chat template: the error says what to do
    with pytest.raises(ValueError, match="the tokenizer has no chat_template"):
        load_user_model(plain, CODES, [], SpeechFormat(unit_token="<{}>", prompt_template="chat_template",
                                                       speaker_in_prompt=False)).prompt("hi", None)


def test_embedding_modules_are_found_by_what_they_are_not_by_their_names():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_layer=1, n_embd=16, n_head=2, n_positions=64))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))
    assert embedding_module_names(gpt2) == ["lm_head", "wte"]
    assert embedding_module_names(llama) == ["embed_tokens", "lm_head"]


def test_the_official_speechtokenizer_format_with_a_pt_checkpoint(tmp_path, codec):
    """config.json and a .pt state dict, as the SpeechTokenizer releases ship (loaded by its own loader)."""
    import numpy as np

    from speechalign.config import Config
    from speechalign.models.speechtokenizer.codec import encode, load_codec

    config_path, _ = Config().codec.files()
    (tmp_path / "config.json").write_text(config_path.read_text())
    torch.save(codec.state_dict(), tmp_path / "SpeechTokenizer.pt")
    official = load_codec(tmp_path / "config.json", tmp_path / "SpeechTokenizer.pt")
    wav = np.sin(np.arange(16000) / 7.0).astype(np.float32) * 0.3
    assert [c.tolist() for c in encode(official, [wav])] == [c.tolist() for c in encode(codec, [wav])]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_bootstrap_and_a_round_of_a_speechgpt_style_model(tmp_path, store_url, bootstrap_template):
    from speechalign.flows.bootstrap import bootstrap
    from speechalign.flows.campaign import alignment_campaign
    from speechalign.runtime.preflight import prepare
    from tests.conftest import copy_bootstrap

    user = speechgpt_llama(tmp_path / "speechgpt", fast=False)
    cfg = copy_bootstrap(bootstrap_template, tmp_path / "work", store_url, f'model.base_model="{user}"',
                         'model.unit_token="<{}>"', "model.speaker_in_prompt=false", "model.sft_epochs=1",
                         'model.prompt_template="[Human]: {text}<eoh> [SpeechGPT]: {speech_start}"')
    shutil.rmtree(cfg.layout.base_model)  # the template's demo base model: bootstrap makes the user's
    prepare(cfg)
    result = bootstrap(str(cfg.workdir))
    assert result["metadata"]["added_tokens"] == 0 and result["metadata"]["source"] == str(user)
    [summary] = alignment_campaign(str(cfg.workdir), rounds=1)
    assert summary.round == 1 and summary.version == "1"
    policy = load_codec_lm(cfg.layout.policy(1))
    assert policy.format == SPEECHGPT and len(policy.tokenizer) == len(AutoTokenizer.from_pretrained(user))
