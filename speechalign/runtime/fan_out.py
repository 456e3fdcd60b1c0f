"""Run a stage's batches: all in this process (scale.runner = "local"), or cut into shards that
run as Prefect tasks on Dask workers (scale.runner = "dask", prefect-dask's DaskTaskRunner).

A shard is a run of whole batches, and every sample has its own seed: the results are the same whichever runner
ran them. Each shard writes its rows to the store
itself and is idempotent (a retried or resumed shard skips what is written), so a failed shard
costs only its own unwritten batches; the stage then fails, and running the round again does the rest.

On a machine with GPUs, each LocalCluster worker takes one (`worker_gpu`). The Dask runner lives for one stage
only: a LocalCluster's workers load the policy and the metric models, and ending it with the stage frees that
memory before training needs it. With scale.dask_address the stage connects to a running cluster instead
(workers need speechalign installed, the store and work directory reachable at the same URL and paths, and
PREFECT_API_URL set to the Prefect server the round reports to).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from speechalign.config import Config
from speechalign.runtime.progress import Progress

log = logging.getLogger(__name__)

Work = Callable[..., dict]  # work(cfg, round_id, batches, *args, on_batch=None) -> figures to add up


class FanOut:
    """A stage's way of running batches; with Dask, one runner (and cluster) for the whole stage.

        with FanOut(cfg, "score") as fan:
            results = fan.run(work, round_id, batches, *args, progress=progress)
    """

    def __init__(self, cfg: Config, stage: str):
        self.cfg, self.stage, self._runner = cfg, stage, None

    def __enter__(self) -> FanOut:
        return self

    def __exit__(self, *exc) -> None:
        if self._runner is not None:
            self._runner.__exit__(*exc)
            self._runner = None

    def run(self, work: Work, round_id: int, batches: list[list], *args,
            progress: Progress | None = None) -> list[dict]:
        """Run `work` over `batches`; one result dict per shard (one in all when local)."""
        if not batches:
            return []
        if self.cfg.scale.runner == "local":
            def on_batch(done: int) -> None:
                if progress:
                    progress.set(done)
            return [work(self.cfg, round_id, batches, *args, on_batch=on_batch)]
        if self._runner is None:
            where = self.cfg.scale.dask_address or f"a local Dask cluster of {self.cfg.scale.workers} workers"
            log.info("%s: fanning out over %s", self.stage, where)
            self._runner = dask_runner(self.cfg).__enter__()
        shards = split(batches, shard_count(self.cfg, len(batches)))
        return _on_dask(self._runner, self.cfg, self.stage, work, round_id, shards, args, progress)


def shard_count(cfg: Config, batches: int) -> int:
    return max(1, min(batches, cfg.scale.shards or cfg.scale.workers))


def split(batches: list[list], shards: int) -> list[list[list]]:
    """Contiguous runs of whole batches, as even as they come."""
    size, extra = divmod(len(batches), shards)
    out, start = [], 0
    for i in range(shards):
        end = start + size + (i < extra)
        out.append(batches[start:end])
        start = end
    return out


@task(cache_policy=NO_CACHE)
def shard(work: Work, cfg: Config, round_id: int, batches: list[list], args: tuple) -> dict:
    """One shard on a Dask worker (its own process: the models it needs are loaded there)."""
    import torch  # noqa: PLC0415 - on the worker

    threads = cfg.scale.torch_threads or max(1, (os.cpu_count() or 1) // max(1, cfg.scale.workers))
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        torch.cuda.set_device(worker_gpu(torch.cuda.device_count()))
    return work(cfg, round_id, batches, *args)


def worker_gpu(gpus: int) -> int:
    """The GPU of this Dask worker: a LocalCluster numbers its workers 0..n-1, and worker i takes GPU i mod the count,
    so N workers load N policies on N GPUs, not all on cuda:0. A worker of a cluster you run (scale.dask_address)
    keeps the device its CUDA_VISIBLE_DEVICES gives it."""
    from distributed import get_worker  # noqa: PLC0415

    name = get_worker().name
    if isinstance(name, int) or str(name).isdigit():
        return int(name) % gpus
    import torch  # noqa: PLC0415

    return torch.cuda.current_device()


def dask_runner(cfg: Config):
    from prefect_dask import DaskTaskRunner  # noqa: PLC0415 - only the dask runner needs it

    if cfg.scale.dask_address:
        return DaskTaskRunner(address=cfg.scale.dask_address)
    api = prefect_api_url()  # the workers report their task runs to the round's Prefect API
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.scale.workers, "threads_per_worker": 1,
                                          "processes": True, "memory_limit": None, "dashboard_address": None,
                                          "env": {"PREFECT_API_URL": api} if api else {}})


def prefect_api_url() -> str | None:
    """The Prefect API this process talks to: PREFECT_API_URL, or the temporary server Prefect started
    for it (without a server, each worker would otherwise start a temporary server of its own)."""
    from prefect.server.api.server import SubprocessASGIServer  # noqa: PLC0415
    from prefect.settings import PREFECT_API_URL  # noqa: PLC0415

    if PREFECT_API_URL.value():
        return PREFECT_API_URL.value()
    server = SubprocessASGIServer()  # the process's one temporary server, if it started one
    return server.api_url if server.server_process is not None else None


def _on_dask(runner, cfg: Config, stage: str, work: Work, round_id: int, shards: list[list[list]], args: tuple,
             progress: Progress | None) -> list[dict]:
    from prefect.futures import as_completed  # noqa: PLC0415

    total = sum(map(len, shards))
    log.info("%s: %d batches in %d shards", stage, total, len(shards))
    futures = {}
    for i, batches in enumerate(shards):
        named = shard.with_options(name=f"{stage}-shard", task_run_name=f"{stage}-shard-{i + 1}-of-{len(shards)}",
                                   retries=cfg.prefect.task_retries,
                                   retry_delay_seconds=cfg.prefect.retry_delay_seconds)
        params = {"work": work, "cfg": cfg, "round_id": round_id, "batches": batches, "args": args}
        futures[runner.submit(named, parameters=params)] = len(batches)
    results, done, failed = [], 0, []
    for future in as_completed(list(futures)):
        try:
            results.append(future.result())
        except Exception as exc:  # noqa: BLE001 - let the other shards finish and write their rows
            failed.append(f"{exc.__class__.__name__}: {exc}")
            continue
        done += futures[future]
        if progress:
            progress.set(done)
    if failed:
        raise RuntimeError(f"{stage}: {len(failed)} of {len(shards)} shards failed (what the others did is stored; "
                           f"run the round again to finish): {failed[0]}")
    return results
