"""What a campaign at scale relies on: one dtype decision for every stage, a plan worked out without the weights, a
token budget bootstrap checks, and registered versions that are an adapter and its lineage, not a copy."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from speechalign.config import load_config
from speechalign.models.precision import decide_precision


@pytest.mark.pure
def test_one_dtype_decision_for_loading_training_merging_and_the_reference():
    # a stage's dtypes: inference = generation, likelihoods, the DPO reference, merges and saved policies;
    # training = what the trainer loads; autocast = the trainer's mixed precision
    cpu = decide_precision("auto", cuda=False, bf16=False)
    assert (cpu.device, cpu.inference, cpu.training, cpu.autocast) == ("cpu", torch.float32, torch.float32, "no")
    assert cpu.trainer_flags() == {"bf16": False, "fp16": False, "use_cpu": True}
    ampere = decide_precision("auto", cuda=True, bf16=True)
    assert (ampere.inference, ampere.training, ampere.autocast) == (torch.bfloat16, torch.bfloat16, "bf16")
    # a GPU with fp16 only (V100, T4): fp16 inference, fp32 master weights under fp16 autocast, never a bf16 model
    v100 = decide_precision("auto", cuda=True, bf16=False)
    assert (v100.inference, v100.training, v100.autocast) == (torch.float16, torch.float32, "fp16")
    assert v100.trainer_flags() == {"bf16": False, "fp16": True, "use_cpu": False}
    assert decide_precision("fp32", cuda=True, bf16=True).inference == torch.float32  # asked for
    with pytest.raises(ValueError, match="this GPU has no bf16; set model.dtype"):
        decide_precision("bf16", cuda=True, bf16=False)
    with pytest.raises(ValueError, match="model.dtype = \"fp16\" needs a GPU"):
        decide_precision("fp16", cuda=False, bf16=False)


LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 160,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
         "max_position_embeddings": 256, "tie_word_embeddings": False, "rms_norm_eps": 1e-5}


def test_the_plan_of_a_model_it_never_loads(tmp_path):
    from speechalign.plan import plan

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(LLAMA))  # a config and no weights
    cfg = load_config(workdir=str(tmp_path / "work"), overrides=[f'model.base_model="{tmp_path / "model"}"',
                                                                  "train.lora_r=4", "model.sft_epochs=2"])
    found = plan(cfg)
    h, i, kv, v, layers = 64, 160, 2 * 16, 1000, 2  # two KV heads of 16
    per_layer = h * h + h * kv + h * kv + h * h + 3 * h * i + 2 * h  # q k v o, gate up down, two norms
    parameters = 2 * v * h + layers * per_layer + h  # untied embeddings and output layer, the final norm
    lora = layers * 4 * ((h + h) + (h + kv) + (h + kv) + (h + h) + 3 * (h + i))  # r (in + out) of every linear
    assert found["model"]["parameters"] == parameters and found["model"]["lora"] == lora
    assert found["model"]["saved_modules"] == 0  # SFT at bootstrap: the embeddings do not train in the rounds
    assert found["disk"]["merged_policy"] == parameters * 4 and found["disk"]["adapter"] == lora * 4  # fp32 (CPU)
    # no corpus yet: the longest utterance is corpus.max_seconds (20 s) at 50 frames a second, after 200 tokens
    assert found["corpus"]["longest_units"] == 1000 and not found["corpus"]["from_store"]
    sequence = 200 + 1000 + 1
    assert found["memory"]["kv_cache"] == 64 * sequence * layers * 2 * kv * 4  # generate.batch_size 64, fp32
    assert found["memory"]["training_weights"] == parameters * 4
    # GRPO (the default): 8 prompts a step x 8 rollouts each; DPO: 16 pairs, a chosen and a rejected side each
    assert found["memory"]["activations"] == 8 * 8 * sequence * layers * h * 34
    dpo = plan(cfg.model_copy(update={"train": cfg.train.model_copy(update={"method": "dpo"})}))
    assert dpo["memory"]["activations"] == 2 * 16 * sequence * layers * h * 34
    problems = found["budget"]
    assert len(problems) == 3 and problems[0].startswith("utterance an utterance of corpus.max_seconds = 20.0: "
                                                         "1000 units after a 200-token prompt need "
                                                         "generate.max_new_tokens >= 1001 (it is 250)")
    assert "train.max_length >= 1201 (it is 512)" in problems[1] and "(it is 256)" in problems[2]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_bootstrap_names_the_utterance_a_knob_would_cut(tmp_path, store_url, espeak_corpus, prefect_server):
    from speechalign.errors import SetupError
    from speechalign.flows.bootstrap import bootstrap
    from speechalign.preference_store.store import open_store
    from speechalign.runtime.preflight import prepare
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path / "work", store_url, espeak_corpus, "generate.max_new_tokens=60")
    prepare(cfg)
    with pytest.raises(SetupError, match=r"units after a \d+-token prompt need generate.max_new_tokens >= \d+ \(it is "
                                         r"60\): its samples would stop before its length; raise it, or lower "
                                         r"corpus.max_seconds") as failed:
        bootstrap(str(cfg.workdir))
    longest = max(open_store(cfg.store_url).prompts(), key=lambda p: (len(p.golden_tokens[0]), p.id))
    assert str(failed.value).startswith(f"utterance {longest.utterance_id}: {len(longest.golden_tokens[0])} units")
    assert not cfg.layout.base_model.exists()  # it stopped before training anything


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_version_is_its_adapter_and_lineage_and_loads_as_the_policy_the_round_made(tmp_path, store_url,
                                                                                      bootstrap_template):
    import mlflow
    from mlflow.tracking import MlflowClient

    from speechalign.flows.campaign import alignment_campaign
    from speechalign.models.codec_lm import CodecLM, build_demo_model, load_codec_lm
    from speechalign.models.sampling import Sampling, generate_units
    from speechalign.preference_store.store import open_store
    from speechalign.report import campaign_report
    from tests.conftest import copy_bootstrap, light_scoring

    cfg = light_scoring(copy_bootstrap(bootstrap_template, tmp_path / "work", store_url))
    small = load_codec_lm(cfg.layout.base_model)  # a larger model of the same vocabulary: 14 MB
    shutil.rmtree(cfg.layout.base_model)
    CodecLM(build_demo_model(small.tokenizer, 4, 256, 4, 512, seed=0), small.tokenizer, small.metadata).save(
        cfg.layout.base_model)
    alignment_campaign(str(cfg.workdir), rounds=2)

    store = open_store(cfg.store_url)
    campaign = store.campaign(cfg.campaign.name)
    client = MlflowClient(cfg.tracking_uri)
    policy_bytes = sum(f.stat().st_size for f in cfg.layout.policy(2).rglob("*") if f.is_file())
    assert policy_bytes > 10e6
    for rnd in store.rounds(campaign.id)[1:]:
        run = client.get_run(rnd.mlflow_run_id)
        logged = [run.info.artifact_uri] + [m.artifact_location for m in mlflow.search_logged_models(
            experiment_ids=[campaign.mlflow_experiment_id], output_format="list",
            filter_string=f"source_run_id = '{rnd.mlflow_run_id}'")]
        logged_bytes = sum(f.stat().st_size for uri in logged for f in Path(uri.removeprefix("file://")).rglob("*")
                           if f.is_file())
        adapter_bytes = sum(f.stat().st_size for f in cfg.layout.adapter(rnd.number).rglob("*") if f.is_file())
        assert adapter_bytes < logged_bytes < policy_bytes / 10  # the adapter and audio, no copy of the weights
        disk = store.stages(rnd.id)["register"].result["disk_bytes"]
        assert logged_bytes < disk < policy_bytes / 2 and run.data.metrics["disk/round_bytes"] == disk
    rows = campaign_report(cfg)["rounds"]
    assert [r.get("register/disk_bytes", 0) > 0 for r in rows] == [False, True, True]

    [version] = client.search_model_versions(f"name='{cfg.registered_model}' and tags.`speechalign.round` = '2'")
    assert version.tags["base_model"] == campaign.base_model_path and version.tags["parent_version"] == "1"
    model = mlflow.pyfunc.load_model(f"models:/{cfg.registered_model}/{version.version}")  # base + 2 adapters
    made, merged = load_codec_lm(cfg.layout.policy(2)), model.unwrap_python_model().lm
    for (name, a), (_, b) in zip(made.model.state_dict().items(), merged.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    rows = [{"text": "please bring the red box", "speaker": "en-us+m3"}, {"text": "why is the lamp so dusty"}]
    prompts = [made.prompt(r["text"], r.get("speaker")) for r in rows]
    assert model.predict(rows) == [g.units for g in generate_units(made, prompts, Sampling(do_sample=False,
                                                                                          max_new_tokens=300), [0, 1])]


def test_the_gpu_smoke_check_runs_its_path_on_a_cpu_at_a_tiny_size():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "benchmarks/gpu_smoke.py", "--size", "tiny", "--steps", "3", "--batch", "2",
                           "--units", "40", "--prompts", "4"], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("tiny: ") and "training torch.float32" in lines[0]
    assert lines[1].startswith("DPO step (2 pairs of 40 units, LoRA r=16): ") and "MFU - (no bf16 peak" in lines[1]
    assert lines[2].startswith("generation (4 sequences, up to 40 units): ")
    assert lines[3].startswith("peak memory: ") and lines[4].startswith("disk: adapter ")
