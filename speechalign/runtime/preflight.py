"""Checks that run before any work: a wrong database URL, MLflow URI or metric model path fails in
seconds, with a message that says what to fix, instead of after an hour of generation."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from speechalign.config import Config, ConfigError
from speechalign.criteria import check_criterion
from speechalign.models.metrics import check_metric_names, plugins_for
from speechalign.preference_store import migrate
from speechalign.preference_store.store import check_reachable
from speechalign.rewards import Reward


class PreflightError(RuntimeError):
    pass


def check_mlflow(uri: str) -> None:
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as resp:
                if resp.status != 200:
                    raise OSError(f"HTTP {resp.status}")
        except (OSError, urllib.error.URLError) as exc:
            raise PreflightError(
                f"cannot reach the MLflow tracking server at {uri} ({exc}); start it (`mlflow server ...`) "
                "or fix [mlflow] tracking_uri in the config") from exc
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PreflightError(f"MLflow store {uri}: cannot create {folder} ({exc}); "
                                 "fix [mlflow] tracking_uri") from exc
        if not os.access(folder, os.W_OK):
            raise PreflightError(f"MLflow store {uri}: {folder} is not writable; fix [mlflow] tracking_uri")
    elif uri.startswith(("postgresql", "mysql", "mssql")):
        try:
            check_reachable(uri)
        except RuntimeError as exc:
            raise PreflightError(f"MLflow tracking store: {exc}") from exc
    else:
        raise PreflightError(
            f"MLflow tracking URI {uri!r} cannot hold a model registry; use a database store "
            "(sqlite:///path/mlflow.db, postgresql://...) or an MLflow server (http://host:5000)")


def check_names(cfg: Config) -> Config:
    """The metric plug-ins and the pair criterion the config names exist, and fit together (ConfigError)."""
    check_metric_names(cfg)
    check_criterion(cfg)
    if cfg.train.method == "grpo" or cfg.pairs.criterion == "best_of_k":
        Reward.from_config(cfg.reward)
        try:
            plugins_for(list(cfg.reward.weights))
        except ValueError as error:
            raise ConfigError(f"reward.weights: {error}") from None
    return cfg


WEIGHTS_BY_PATH = ("nisqa", "speechbertscore", "asr")  # plug-ins whose models a user gives by path


def check_metric_models(cfg: Config) -> None:
    """Load the metric plug-ins whose models the user gives by path (once; rounds reuse them)."""
    from speechalign.models.metrics import MetricUnavailable, get_metric  # noqa: PLC0415 - loads torch models

    for name in dict.fromkeys(cfg.score.metrics + cfg.score.heldout_metrics):
        if name not in WEIGHTS_BY_PATH or (name == "asr" and not cfg.score.asr_model):  # pocketsphinx ships its own
            continue
        try:
            get_metric(name, cfg.score)
        except MetricUnavailable as exc:
            raise PreflightError(f"metric {name}: {exc}") from exc


def check_quantization(cfg: Config) -> None:
    """QLoRA (model.quantization) trains on bitsandbytes' 8-/4-bit weights: a GPU and the qlora extra."""
    if cfg.model.quantization == "none":
        return
    import importlib.util  # noqa: PLC0415

    import torch  # noqa: PLC0415

    if not torch.cuda.is_available():
        raise PreflightError(f"model.quantization = {cfg.model.quantization!r} needs a GPU (bitsandbytes' kernels); "
                             "on this machine set model.quantization = \"none\"")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise PreflightError(f"model.quantization = {cfg.model.quantization!r} needs bitsandbytes: "
                             "pip install 'speechalign[qlora]'")


def check_codec(cfg: Config) -> None:
    """The codec's config is there and fits codec.kind and codec.codebooks (its config file alone: seconds)."""
    from speechalign.models.codecs import codec_flattening  # noqa: PLC0415

    try:
        codec_flattening(cfg.codec)
    except (OSError, ValueError) as exc:
        raise PreflightError(f"codec: {exc}") from exc


def prepare(cfg: Config, mlflow_too: bool = True) -> None:
    """Reach the store (and MLflow), bring the store's schema to the newest migration, and check that the machine
    can do what the config asks (QLoRA)."""
    check_quantization(cfg)
    url = cfg.store_url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        check_reachable(url)
    except RuntimeError as exc:
        raise PreflightError(str(exc)) from exc
    if mlflow_too:
        check_mlflow(cfg.tracking_uri)
        check_metric_models(cfg)
        check_codec(cfg)
    if cfg.store.auto_migrate:
        migrate.upgrade(url)
    elif migrate.current_revision(url) != migrate.head_revision(url):
        raise PreflightError(f"the preference store at {url} is not at the newest schema; run `speechalign db upgrade`")
