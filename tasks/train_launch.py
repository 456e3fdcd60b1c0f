"""Data-parallel DPO: the train stage run in train.processes processes by `accelerate launch`.

The stage (tasks/train.py) writes the round's config next to its output and runs

    accelerate launch --num_processes N --multi_gpu --mixed_precision bf16|fp16|no \\
        -m speechalign.tasks.train_launch <workdir> <config.toml> <round id> <result.json>

Every process loads the policy and trains on its share of each batch (TRL's DPOTrainer under
DDP: the effective batch is N x train.batch_size x gradient_accumulation_steps); the main process
saves the adapter and the merged policy and writes the stage's result. The same command, run by
hand, trains a round's pairs outside the flow.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import torch

from speechalign.config import Config, load_config
from speechalign.models.precision import decide_precision
from speechalign.preference_store.store import open_store
from speechalign.runtime.results import Trained, dump, load
from speechalign.tasks.train import run_dpo

log = logging.getLogger(__name__)


def launch_command(cfg: Config, config_file: Path, round_id: int, result_file: Path) -> list[str]:
    """`accelerate launch` of this module: one process per GPU (DDP), or gloo processes on a machine without."""
    mixed = decide_precision(cfg.model.dtype).autocast  # as the processes' DPOConfig will have it
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.train.processes),
            "--num_machines", "1", "--mixed_precision", mixed, "--dynamo_backend", "no",
            "--multi_gpu",  # torchrun's launcher: NCCL on GPUs, gloo on a machine without (DPOConfig use_cpu)
            "-m", "speechalign.tasks.train_launch", str(cfg.workdir), str(config_file), str(round_id), str(result_file)]


def launch_dpo(cfg: Config, round_id: int) -> Trained:
    out = cfg.layout.launch_dir(open_store(cfg.store_url).round(round_id).number)
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "config.toml"
    config_file.write_text(cfg.to_toml())
    result_file = out / "result.json"
    result_file.unlink(missing_ok=True)
    command = launch_command(cfg, config_file, round_id, result_file)
    log.info("train: %s", " ".join(command))
    done = subprocess.run(command, check=False)
    if done.returncode != 0 or not result_file.is_file():
        raise RuntimeError(f"multi-process DPO (train.processes = {cfg.train.processes}) failed with exit code "
                           f"{done.returncode}; its log is above. Set train.processes = 1 to train in one process.")
    return load(Trained, json.loads(result_file.read_text()))


def main(argv: list[str]) -> int:
    workdir, config_file, round_id, result_file = argv[0], Path(argv[1]), int(argv[2]), Path(argv[3])
    cfg = load_config(config_file, workdir=workdir)
    result = run_dpo(cfg, round_id)
    if result is not None:  # the main process
        tmp = result_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(dump(result)))
        tmp.rename(result_file)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # every rank waits for the main one's policy and result
        torch.distributed.destroy_process_group()  # a rank that exits with gloo's threads still running aborts
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
