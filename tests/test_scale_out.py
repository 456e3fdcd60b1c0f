"""Scale-out: generation and scoring fanned out over a local Dask cluster (prefect-dask) give the
same samples and scores as the in-process runner, and the shards run as Prefect task runs; DPO runs
data-parallel in two processes under `accelerate launch` (on CPU here: gloo; on GPUs: NCCL)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import copy_bootstrap


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, bootstrap_template):
    tmp_path = tmp_path_factory.mktemp("scale")
    cfg = copy_bootstrap(bootstrap_template, tmp_path / "work", f"sqlite:///{tmp_path / 'store.db'}",
                         "generate.batch_size=8", "score.batch_size=16",
                         'score.metrics=["unit_edit_distance", "policy_loglik", "dnsmos"]', 'score.candidates="all"')
    return cfg.workdir


def first_round(workdir, runner: str, *overrides: str) -> dict:
    """Generate, decode and score round 1 of a campaign named after the runner; what the store holds."""
    from speechalign.config import load_config
    from speechalign.flows.common import ensure_campaign
    from speechalign.runtime.context import open_round
    from speechalign.tasks.decode import decode
    from speechalign.tasks.generate import generate
    from speechalign.tasks.score import score

    cfg = load_config(overrides=[f'campaign.name="{runner}"', f'scale.runner="{runner}"', "scale.workers=2",
                                 *overrides], workdir=str(workdir))
    campaign = ensure_campaign(cfg)
    ctx = open_round(cfg, campaign, 1, campaign.base_model_path)
    store, rnd = ctx.store, ctx.round
    generated = generate.fn(ctx)
    scored = score.fn(ctx, decode.fn(ctx, generated))
    scores = store.scores(rnd.id)
    samples = store.samples(rnd.id)
    return {
        "ctx": ctx, "generated": generated, "scored": scored, "failures": scored.failures,
        "tokens": {(s.prompt_id, s.kind, s.k): (s.tokens, s.seed, s.finished) for s in samples},
        "scores": {(s.prompt_id, s.kind, s.k, m): v for s in samples for m, v in scores[s.id].items()},
    }


async def shard_runs(name_prefix: str) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )

    async with get_client() as client:
        runs = await client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(like_=name_prefix),
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=["COMPLETED"]))))
    return sorted(r.name for r in runs)


def test_dask_runner_gives_the_in_process_results(workdir):
    started = time.monotonic()
    local = first_round(workdir, "local")
    middle = time.monotonic()
    dask = first_round(workdir, "dask")
    print(f"in process {middle - started:.1f} s, dask {time.monotonic() - middle:.1f} s")

    assert dask["generated"].generated == local["generated"].generated == 9 * 2
    assert dask["tokens"] == local["tokens"]  # same batches, same seeds: identical sequences
    assert dask["scores"].keys() == local["scores"].keys()
    assert len(local["scores"]) == 27 * 5  # 9 golden + 18 candidates x (UED, log-likelihood, 3 DNSMOS values)
    for key, value in local["scores"].items():
        other = dask["scores"][key]
        assert (value is None) == (other is None), key
        if value is not None:
            assert other == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert dask["failures"] == local["failures"]

    # the shards were Prefect task runs (5 generate batches of 8 -> 2 shards; 4 score batches of 16 -> 2 a metric)
    generate_runs = asyncio.run(shard_runs("generate-shard-"))
    assert generate_runs == ["generate-shard-1-of-2", "generate-shard-2-of-2"]
    assert len(asyncio.run(shard_runs("score-shard-"))) == 2 * 3  # 3 metric plug-ins


def test_shards_are_runs_of_whole_batches():
    from speechalign.runtime.fan_out import split

    batches = [[i] for i in range(7)]
    shards = split(batches, 3)
    assert [len(s) for s in shards] == [3, 2, 2]
    assert [b for s in shards for b in s] == batches
    assert split(batches[:1], 1) == [batches[:1]]


def test_dpo_in_two_processes_under_accelerate(workdir):
    import math

    from speechalign.models.codec_lm import load_codec_lm
    from speechalign.tasks.pairs import build_pairs
    from speechalign.tasks.train import train

    done = first_round(workdir, "local", "train.processes=2", "train.batch_size=4")  # stored already: no new work
    ctx = done["ctx"]
    pairs = build_pairs.fn(ctx, done["scored"])
    result = train.fn(ctx, pairs)

    assert result.processes == 2
    assert result.pairs == pairs.pairs == 18  # golden vs each of 2 candidates of 9 prompts
    assert result.steps == math.ceil(pairs.pairs / (2 * 4))  # each step: 4 pairs on each of the 2 processes
    assert result.history and all(math.isfinite(h["loss"]) for h in result.history)
    policy = load_codec_lm(result.policy)  # the main process saved a complete merged policy
    assert policy.metadata["round"] == 1
