"""The codec LM: units survive tokenization, and a user's own HF model goes through the same path."""

from dataclasses import asdict

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from speechalign.models.codec_lm import (
    CodecLM,
    SpeechFormat,
    build_demo_model,
    build_demo_tokenizer,
    check_units_survive,
    completion_text,
    load_codec_lm,
    load_user_model,
    speaker_token,
)
from speechalign.models.sampling import Sampling, generate_units

NO_SPEAKER = asdict(SpeechFormat(speaker_in_prompt=False))


def test_demo_tokenizer_keeps_units_speakers_and_lowercases_text():
    tok = build_demo_tokenizer(1024, ["en-us+m3"])
    text = speaker_token("en-us+m3") + "Hi!<sosp>" + completion_text([0, 512, 1023])
    tokens = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    assert tokens == ["<spk:en-us+m3>", "h", "i", "!", "<sosp>", "<u0>", "<u512>", "<u1023>", "<eosp>"]
    assert tok.unk_token_id not in tok(text)["input_ids"]


def test_a_tokenizer_that_loses_units_is_refused():
    vocab = {"<unk>": 0, "<sosp>": 1, "<eosp>": 2, "a": 3, "b": 4}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("<[^>]+>|.", behavior="isolated")  # a plain string: matched literally
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    with pytest.raises(ValueError, match="does not keep codec units"):
        check_units_survive(tok, 16)


def _user_model_dir(tmp_path):
    """A user's model: GPT-2 with a byte-level BPE tokenizer that knows no speech tokens."""
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 50,
                             trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers import decoders
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=256))
    model.save_pretrained(tmp_path / "user")
    tok.save_pretrained(tmp_path / "user")
    return tmp_path / "user", len(tok)


def test_users_hf_model_gets_the_speech_vocabulary_and_generates_units(tmp_path):
    path, before = _user_model_dir(tmp_path)
    lm = load_user_model(path, codebook_size=64, speakers=["alice"], fmt=SpeechFormat())
    assert lm.metadata["added_tokens"] == 64 + 2 + 1
    assert lm.model.get_input_embeddings().weight.shape[0] == len(lm.tokenizer) == before + 67
    out = generate_units(lm, [lm.prompt("the fox", "alice")], Sampling(max_new_tokens=20), [0])
    assert all(0 <= u < 64 for u in out[0].units) and len(out[0].units) > 0
    lm.save(tmp_path / "policy")
    again = load_codec_lm(tmp_path / "policy")
    assert len(again.tokenizer) == len(lm.tokenizer) and again.metadata["added_tokens"] == 67


def test_each_sample_is_drawn_with_its_own_seed_whatever_its_batch_and_yields_only_units():
    tok = build_demo_tokenizer(32, [])
    lm = CodecLM(build_demo_model(tok, 1, 32, 2, 256, seed=0), tok, {"codebook_size": 32, "format": NO_SPEAKER})
    texts = ["open the box.", "a longer sentence here.", "hi.", "the red lamp by the market."]
    prompts = [lm.prompt(t, None) for t in texts]
    for sampling in (Sampling(max_new_tokens=30), Sampling(temperature=0.8, top_k=8, top_p=0.9, max_new_tokens=30)):
        first = generate_units(lm, prompts, sampling, [5, 6, 7, 8])
        assert [g.units for g in first] == [g.units for g in generate_units(lm, prompts, sampling, [5, 6, 7, 8])]
        assert [g.units for g in first] != [g.units for g in generate_units(lm, prompts, sampling, [9, 6, 7, 8])][:1] \
            + [g.units for g in first][1:]  # another seed, another first sample; the others keep theirs
        # alone, in another batch, at another place: the same sample for the same prompt and seed
        alone = [generate_units(lm, [p], sampling, [s])[0].units for p, s in zip(prompts, [5, 6, 7, 8])]
        reordered = generate_units(lm, prompts[::-1] + prompts[:1], sampling, [8, 7, 6, 5, 5])
        assert [g.units for g in first] == alone == [g.units for g in reordered[3::-1]]
        assert reordered[4].units == first[0].units
        assert all(0 <= u < 32 for g in first for u in g.units)
        assert all(g.finished or len(g.units) == 30 for g in first)
    greedy = generate_units(lm, prompts, Sampling(do_sample=False, max_new_tokens=30), [0, 0, 0, 0])
    [alone] = generate_units(lm, prompts[:1], Sampling(do_sample=False, max_new_tokens=30), [9])
    assert greedy[0].units == alone.units
    with pytest.raises(ValueError, match="4 prompts and 1 seeds"):
        generate_units(lm, prompts, Sampling(), [1])
    assert torch.is_grad_enabled()  # generation leaves autograd as it found it


def test_sequence_nll_is_each_items_own_loss_padded_or_not():
    from speechalign.models.likelihood import sequence_nll

    tok = build_demo_tokenizer(32, [])
    lm = CodecLM(build_demo_model(tok, 1, 32, 2, 256, seed=0), tok, {"codebook_size": 32, "format": NO_SPEAKER})
    items = [(lm.prompt("open the box.", None), [3, 4, 5, 6, 7, 8, 9]), (lm.prompt("hi.", None), [1, 2])]
    per_item = []
    for prompt, units in items:  # the model's own loss over the completion tokens, one unpadded item at a time
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        c = tok(completion_text(units), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            loss = lm.model(input_ids=torch.tensor([p + c]), labels=torch.tensor([[-100] * len(p) + c])).loss
        per_item.append((float(loss), len(c)))
    assert per_item[0][0] > 0 and per_item[0][0] != pytest.approx(per_item[1][0])
    # golden_nll and policy_loglik per sequence: each item's own mean loss, in a padded batch or alone
    assert sequence_nll(lm, items, batch_size=2) == pytest.approx([loss for loss, _ in per_item], rel=1e-5)
    assert sequence_nll(lm, items, batch_size=1) == pytest.approx([loss for loss, _ in per_item], rel=1e-5)
