"""Register: log the round to MLflow and make its merged policy a new version of the registered model.

The round's nested run gets the config's round knobs as params, the DPO curves (per step), the
held-out metrics (step = round number, so rounds line up in the chart view), stage timings and
the LoRA adapter; the policy is logged as a pyfunc model and registered, tagged with campaign,
round and parent version. Each piece is looked up before it is written, so a resumed stage
writes nothing twice and leaves exactly one version per round.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param

from speechalign.config import Config
from speechalign.models.pyfunc import CodecLMModel
from speechalign.preference_store.schema import Round
from speechalign.tasks.decode import synthesizer, write_wav
from speechalign.tasks.import_corpus import safe_name
from speechalign.tasks.stage import fault_point, open_store
from speechalign.tracking import CAMPAIGN_TAG, ROUND_TAG, campaign_run, round_run

LOGGED_SECTIONS = ("generate", "score", "pairs", "train", "evaluate", "guard")
PIP_REQUIREMENTS = ["torch", "transformers", "peft", "tokenizers", "speechalign"]
AUDIO_PROMPTS = 3  # held-out prompts whose audio each round logs, the same ones every round


def round_params(cfg: Config) -> list[Param]:
    data = cfg.to_dict()
    return [Param(f"{section}.{key}", str(value)[:6000])
            for section in LOGGED_SECTIONS for key, value in data[section].items()]


def heldout_metrics(result: dict) -> dict[str, float]:
    return {k: float(v) for k, v in result.items() if k.startswith("heldout/")}


def round_figures(stages: dict) -> dict[str, float]:
    """Pairs kept, pair yield, candidate diversity and whether the collapse guard flagged the round."""
    pairs, guard = stages["pairs"], stages.get("guard", {})
    figures = {"pairs": pairs["pairs"], "pairs/yield": pairs.get("pair_yield"),
               "pairs/candidate_diversity": pairs.get("candidate_diversity"),
               "guard/flagged": float(guard["flagged"]) if "flagged" in guard else None}
    return {k: float(v) for k, v in figures.items() if v is not None}


def log_audio_samples(cfg: Config, client, run_id: str, round_id: int, artifact_path: str) -> int:
    """For the first few held-out prompts: the real recording, its golden tokens decoded, and this round's
    sample, as WAVs the MLflow UI plays side by side (plus the sentence). Skipped if already logged."""
    if client.list_artifacts(run_id, artifact_path):
        return 0
    store = open_store(cfg)
    number = store.round(round_id).number
    prompts = {p.id: p for p in store.prompts("heldout")}
    samples = [s for s in store.samples(round_id, "heldout") if s.k == 0 and s.audio_path]
    synth = synthesizer(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        for s in samples[:AUDIO_PROMPTS]:
            p = prompts[s.prompt_id]
            folder = Path(tmp) / safe_name(p.utterance_id)[:80]
            folder.mkdir()
            (folder / "text.txt").write_text(p.text + "\n")
            shutil.copyfile(p.golden_audio_path, folder / "1_recording.wav")
            write_wav(folder / "2_golden_tokens.wav", synth.synthesize([p.golden_tokens[0]], [p.speaker])[0],
                      synth.sample_rate)
            shutil.copyfile(s.audio_path, folder / f"3_round_{number}.wav")
        client.log_artifacts(run_id, tmp, artifact_path)
    return min(len(samples), AUDIO_PROMPTS)


def log_baseline(cfg: Config, round_id: int) -> dict:
    """Round 0: the base model's held-out metrics go on the campaign's run at step 0."""
    store = open_store(cfg)
    campaign = store.campaign(cfg.campaign.name)
    c, _, parent = campaign_run(cfg, store, campaign)
    heldout = heldout_metrics(store.stages(round_id)["evaluate"].result)
    if not c.get_metric_history(parent, next(iter(heldout))):
        now = int(time.time() * 1000)
        c.log_batch(parent, metrics=[Metric(k, v, now, 0) for k, v in heldout.items()])
    log_audio_samples(cfg, c, parent, round_id, "audio/round-0")
    c.set_terminated(parent)  # the campaign is at rest between rounds; later rounds log to it again
    return {"run_id": parent, **heldout}


def register_round(cfg: Config, round_id: int) -> dict:
    store = open_store(cfg)
    rnd = store.round(round_id)
    campaign = store.campaign(cfg.campaign.name)
    c, parent, run_id = round_run(cfg, store, campaign, rnd)
    stages = {name: st.result or {} for name, st in store.stages(round_id).items()}
    timings = {name: st.seconds for name, st in store.stages(round_id).items() if st.seconds is not None}
    train, heldout = stages["train"], heldout_metrics(stages["evaluate"])
    now = int(time.time() * 1000)
    if not c.get_metric_history(run_id, next(iter(heldout))):  # metrics of this round not logged yet
        metrics = [Metric(f"dpo/{k}", float(v), now, h["step"]) for h in train["history"] for k, v in h.items()
                   if k != "step"]
        metrics += [Metric(k, v, now, rnd.number) for k, v in heldout.items()]
        metrics += [Metric(k, v, now, rnd.number) for k, v in round_figures(stages).items()]
        metrics += [Metric(f"time/{name}_s", float(s), now, rnd.number) for name, s in timings.items()]
        c.log_batch(run_id, metrics=metrics, params=round_params(cfg))
        summary = {**heldout, **round_figures(stages),
                   **{f"dpo_final/{k}": float(v) for k, v in train["final"].items()}}
        c.log_batch(parent, metrics=[Metric(k, v, now, rnd.number) for k, v in summary.items()])
    if not c.list_artifacts(run_id, "adapter"):
        c.log_artifacts(run_id, train["adapter"], "adapter")
    log_audio_samples(cfg, c, run_id, round_id, "audio")
    version = registered_version(cfg, c, campaign.mlflow_experiment_id or "", run_id, rnd, train["policy"])
    previous = store.round_number(campaign.id, rnd.number - 1)
    parent_ckpt = store.checkpoint(previous.id) if previous else None
    store.add_checkpoint({"round_id": round_id, "path": train["policy"], "mlflow_model_name": cfg.registered_model,
                          "mlflow_version": str(version), "metrics": heldout,
                          "promoted": False, "parent_version": parent_ckpt.mlflow_version if parent_ckpt else None})
    c.set_terminated(run_id)
    c.set_terminated(parent)
    return {"run_id": run_id, "model": cfg.registered_model, "version": str(version)}


def registered_version(cfg: Config, c, exp_id: str, run_id: str, rnd: Round, policy_dir: str) -> str:
    """The round's model version: found by run id if it exists, else logged and registered now."""
    name = cfg.registered_model
    existing = c.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        return existing[0].version
    logged = mlflow.search_logged_models(experiment_ids=[exp_id], output_format="list",
                                         filter_string=f"source_run_id = '{run_id}' AND name = 'policy'")
    if logged:
        model_uri = logged[0].model_uri
    else:
        with mlflow.start_run(run_id=run_id):
            model_uri = mlflow.pyfunc.log_model(name="policy", python_model=CodecLMModel(),
                                                artifacts={"policy": policy_dir},
                                                pip_requirements=PIP_REQUIREMENTS).model_uri
    parent_version = previous_version(c, name, rnd)
    fault_point("register", "mid")  # the model is logged to the run, not yet registered
    version = mlflow.register_model(model_uri, name, tags={
        CAMPAIGN_TAG: cfg.campaign.name, ROUND_TAG: str(rnd.number), "parent_version": parent_version})
    return version.version


def previous_version(c, name: str, rnd: Round) -> str:
    if rnd.number <= 1:
        return "base"
    found = c.search_model_versions(f"name='{name}' and tags.`{ROUND_TAG}` = '{rnd.number - 1}'")
    return found[0].version if found else "unknown"
