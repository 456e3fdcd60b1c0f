"""Register: log the round to MLflow and make its merged policy a new version of the registered model.

The round's nested run gets the config's round knobs as params, the DPO curves (per step), the round's
figures (speechalign/runtime/results.py: held-out metrics, pairs, guard; step = round number, so rounds line up in
the chart view), stage timings and the LoRA adapter; the policy is logged as a pyfunc model and
registered, tagged with campaign, round and parent version. Each piece is looked up before it is
written, so a resumed stage writes nothing twice and leaves exactly one version per round.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param

from speechalign.bootstrap.ceiling import golden_wavs
from speechalign.config import Config
from speechalign.layout import safe_name
from speechalign.models.pyfunc import CodecLMModel
from speechalign.preference_store.schema import Round
from speechalign.preference_store.store import PreferenceStore
from speechalign.runtime.context import RoundContext
from speechalign.runtime.faults import fault_point
from speechalign.runtime.results import Ceiling, Heldout, Pairs, Registered, Trained, Verdict, figures
from speechalign.runtime.stage import stage
from speechalign.runtime.tracking import CAMPAIGN_TAG, ROUND_TAG, campaign_run, round_run
from speechalign.tasks.evaluate import GAP_FIGURE

LOGGED_SECTIONS = ("generate", "score", "pairs", "train", "evaluate", "guard")
PIP_REQUIREMENTS = ["torch", "transformers", "peft", "tokenizers", "speechalign"]
AUDIO_PROMPTS = 3  # held-out prompts whose audio each round logs, the same ones every round


@stage
def register(ctx: RoundContext, pairs: Pairs | None, trained: Trained, heldout: Heldout,
             verdict: Verdict) -> Registered:
    cfg, store, rnd = ctx.cfg, ctx.store, ctx.round
    c, experiment, parent, run_id = round_run(cfg, store, ctx.campaign, rnd)
    summary = {**figures(heldout), **interval_figures(heldout), **(figures(pairs) if pairs else {}),
               **figures(verdict), **figures(trained)}
    if not c.get_metric_history(run_id, next(iter(figures(heldout)))):  # metrics of this round not logged yet
        now = int(time.time() * 1000)
        timings = {name: st.seconds for name, st in store.stages(rnd.id).items() if st.seconds is not None}
        method = f"{trained.method}/"  # dpo/ or grpo/: the trainer's figures, per step
        metrics = [Metric(f"{method}{k}", float(v), now, h["step"]) for h in trained.history for k, v in h.items()
                   if k != "step"]
        metrics += [Metric(k, v, now, rnd.number) for k, v in summary.items() if not k.startswith(method)]
        metrics += [Metric(f"time/{name}_s", float(s), now, rnd.number) for name, s in timings.items()]
        c.log_batch(run_id, metrics=metrics, params=round_params(cfg))
        c.log_batch(parent, metrics=[Metric(k.replace(method, f"{trained.method}_final/", 1), v, now, rnd.number)
                                     for k, v in summary.items()])
    if not c.list_artifacts(run_id, "adapter"):
        c.log_artifacts(run_id, trained.adapter, "adapter")
    log_gap_figure(ctx, c, run_id)
    log_audio_samples(cfg, store, c, run_id, rnd, "audio")
    log_rollouts(store, c, run_id, rnd)
    version = registered_version(cfg, c, experiment, run_id, rnd, lineage(store, rnd, run_id),
                                 ctx.campaign.base_model_path)
    disk = round_disk_bytes(ctx, c, experiment, run_id)
    if not c.get_metric_history(run_id, "disk/round_bytes"):
        c.log_metric(run_id, "disk/round_bytes", disk, step=rnd.number)
    previous = store.round_number(ctx.campaign.id, rnd.number - 1)
    parent_ckpt = store.checkpoint(previous.id) if previous else None
    store.add_checkpoint({"round_id": rnd.id, "path": trained.policy, "mlflow_model_name": cfg.registered_model,
                          "mlflow_version": str(version), "metrics": heldout.metrics,
                          "promoted": False, "parent_version": parent_ckpt.mlflow_version if parent_ckpt else None})
    c.set_terminated(run_id)
    c.set_terminated(parent)
    return Registered(run_id=run_id, model=cfg.registered_model, version=str(version), disk_bytes=disk)


def round_disk_bytes(ctx: RoundContext, client, experiment: str, run_id: str) -> int:
    """What the round keeps on disk: its folder (adapter, WAVs, figures) but its merged policy, which the work
    directory keeps for the last round and the champion only, and its MLflow run's artifacts where they are files
    here (an MLflow server's store is its own)."""
    policy = ctx.layout.policy(ctx.number)
    kept = sum(f.stat().st_size for f in ctx.layout.round_dir(ctx.number).rglob("*")
               if f.is_file() and policy not in f.parents)
    logged = mlflow.search_logged_models(experiment_ids=[experiment], output_format="list",
                                         filter_string=f"source_run_id = '{run_id}'")
    for uri in [client.get_run(run_id).info.artifact_uri, *(m.artifact_location for m in logged)]:
        if uri.startswith("file://"):
            kept += sum(f.stat().st_size for f in Path(uri.removeprefix("file://")).rglob("*") if f.is_file())
    return kept


@stage
def register_baseline(ctx: RoundContext, heldout: Heldout, reachable: Ceiling) -> Registered:
    """Round 0: the base model's held-out metrics and the ceiling go on the campaign's run at step 0 (no model
    version)."""
    c, _, parent, _ = campaign_run(ctx.cfg, ctx.store, ctx.campaign)
    metrics = figures(heldout)
    if not c.get_metric_history(parent, next(iter(metrics))):
        now = int(time.time() * 1000)
        ceiling = {f"ceiling/{row}/{k}": v for row, values in reachable.rows.items() for k, v in values.items()}
        c.log_batch(parent, metrics=[Metric(k, v, now, 0) for k, v in {**metrics, **ceiling}.items()])
    log_audio_samples(ctx.cfg, ctx.store, c, parent, ctx.round, "audio/round-0")
    log_gap_figure(ctx, c, parent)
    c.set_terminated(parent)  # the campaign is at rest between rounds; later rounds log to it again
    return Registered(run_id=parent, model=ctx.cfg.registered_model, version="base")


def interval_figures(heldout: Heldout) -> dict[str, float]:
    """Each held-out change with its 95% interval, as metrics: change/heldout/<metric>/vs_base (and _low, _high)."""
    out = {}
    for against, found in heldout.changes.items():
        for metric, (mean, low, high) in found.items():
            name = f"change/heldout/{metric}/{against}"
            out.update({name: mean, f"{name}_low": low, f"{name}_high": high})
    return out


def log_gap_figure(ctx: RoundContext, client, run_id: str) -> None:
    """The round's golden-vs-synthetic projection (speechalign/stats/distribution_gap.py), once."""
    path = ctx.layout.round_dir(ctx.number) / GAP_FIGURE
    folder = f"distribution_gap/round-{ctx.number}"
    if path.is_file() and not client.list_artifacts(run_id, folder):
        client.log_artifact(run_id, str(path), folder)


def round_params(cfg: Config) -> list[Param]:
    data = cfg.to_dict()
    return [Param(f"{section}.{key}", str(value)[:6000])
            for section in LOGGED_SECTIONS for key, value in data[section].items()]


def log_audio_samples(cfg: Config, store: PreferenceStore, client, run_id: str, rnd: Round, artifact_path: str) -> int:
    """For the first few held-out prompts: the real recording, its golden tokens decoded (the ceiling's WAV), and
    this round's sample, as WAVs the MLflow UI plays side by side (plus the sentence). Skipped if already logged."""
    if client.list_artifacts(run_id, artifact_path):
        return 0
    prompts = {p.id: p for p in store.prompts("heldout")}
    samples = [s for s in store.samples(rnd.id, "heldout") if s.k == 0 and s.audio_path][:AUDIO_PROMPTS]
    golden = golden_wavs(cfg, [prompts[s.prompt_id] for s in samples])
    with tempfile.TemporaryDirectory() as tmp:
        for s in samples:
            p = prompts[s.prompt_id]
            folder = Path(tmp) / safe_name(p.utterance_id)[:80]
            folder.mkdir()
            (folder / "text.txt").write_text(p.text + "\n")
            shutil.copyfile(p.golden_audio_path, folder / "1_recording.wav")
            if p.id in golden:
                shutil.copyfile(golden[p.id], folder / "2_golden_tokens.wav")
            shutil.copyfile(s.audio_path, folder / f"3_round_{rnd.number}.wav")
        client.log_artifacts(run_id, tmp, artifact_path)
    return min(len(samples), AUDIO_PROMPTS)


def log_rollouts(store: PreferenceStore, client, run_id: str, rnd: Round) -> None:
    """An online round's first and last step's rollouts whose WAVs were kept, named by step and reward, once."""
    kept = [s for s in store.samples(rnd.id, "rollout") if s.audio_path and Path(s.audio_path).is_file()]
    if not kept or client.list_artifacts(run_id, "rollouts"):
        return
    steps = {s.sampling["step"] for s in kept}
    kept = [s for s in kept if s.sampling["step"] in (min(steps), max(steps))]
    rewards = store.scores(rnd.id, "rollout")
    with tempfile.TemporaryDirectory() as tmp:
        for s in kept:
            reward = rewards.get(s.id, {}).get("reward")
            suffix = f"_reward{reward:.2f}" if reward is not None else ""
            name = f"step{s.sampling['step']:04d}_k{s.k}{suffix}.wav"
            shutil.copyfile(s.audio_path, Path(tmp) / name)
        client.log_artifacts(run_id, tmp, "rollouts")


def lineage(store: PreferenceStore, rnd: Round, run_id: str) -> list[str]:
    """The adapters a round's policy is made of, in order: every earlier round's of the campaign, then its own, as
    the MLflow URIs of their runs' adapter artifacts."""
    earlier = [r for r in store.rounds(rnd.campaign_id) if 0 < r.number < rnd.number]
    missing = [r.number for r in earlier if not r.mlflow_run_id]
    if missing:
        raise RuntimeError(f"rounds {missing} of the campaign have no MLflow run: round {rnd.number}'s lineage "
                           "needs their adapters; run `speechalign round` to finish them first")
    return [f"runs:/{r.mlflow_run_id}/adapter" for r in earlier] + [f"runs:/{run_id}/adapter"]


def registered_version(cfg: Config, c, exp_id: str, run_id: str, rnd: Round, adapters: list[str],
                       base_model: str) -> str:
    """The round's model version: found by run id if it exists, else logged and registered now. It holds no
    weights: the base model's path and the adapters of its lineage, which the pyfunc loads and merges in order
    (models/pyfunc.py); the round's run holds its adapter."""
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
            model_uri = mlflow.pyfunc.log_model(
                name="policy", python_model=CodecLMModel(), pip_requirements=PIP_REQUIREMENTS,
                model_config={"base_model": base_model, "adapters": adapters, "dtype": cfg.model.dtype}).model_uri
    parent_version = previous_version(c, name, rnd)
    fault_point("register", "mid")  # the model is logged to the run, not yet registered
    version = mlflow.register_model(model_uri, name, tags={
        CAMPAIGN_TAG: cfg.campaign.name, ROUND_TAG: str(rnd.number), "parent_version": parent_version,
        "base_model": base_model})
    return version.version


def previous_version(c, name: str, rnd: Round) -> str:
    if rnd.number <= 1:
        return "base"
    found = c.search_model_versions(f"name='{name}' and tags.`{ROUND_TAG}` = '{rnd.number - 1}'")
    return found[0].version if found else "unknown"
