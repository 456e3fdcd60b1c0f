"""Train: DPO with a LoRA adapter (TRL + PEFT) on the round's pairs; the merged model is the next policy.

The reference model is the round's input policy by default (PEFT's adapter-disabled model, so no
second copy is held); `train.reference = "initial"` makes it the campaign's base model instead.
dtypes follow `[model] dtype` and the hardware (models/precision.py). Training holds the host's lock for its
device (speechalign/runtime/host_lock.py), so two campaigns never train on one GPU at the same time. With
train.processes > 1 the stage launches data-parallel DPO with accelerate (tasks/train_launch.py).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
from contextlib import ExitStack

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import PrinterCallback
from trl import DPOConfig, DPOTrainer

from speechalign.config import Config
from speechalign.models.codec_lm import CodecLM, lineage_after, load_codec_lm, load_options, release_policies
from speechalign.models.precision import Precision, decide_precision
from speechalign.preference_store.store import PreferenceStore, open_store
from speechalign.runtime.context import RoundContext
from speechalign.runtime.host_lock import HostTrainingLock, device_name
from speechalign.runtime.policies import merged_lineage
from speechalign.runtime.results import Pairs, Trained
from speechalign.runtime.stage import stage
from speechalign.runtime.training_progress import TrainingProgress

DPO_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected", "grad_norm")


def preference_dataset(store: PreferenceStore, round_id: int, lm: CodecLM) -> Dataset:
    pairs = store.pairs(round_id)  # human pairs (pairs.human = "mix") may name samples of earlier rounds
    samples = store.samples_by_id(i for p in pairs for i in (p.chosen_sample_id, p.rejected_sample_id))
    prompts = {p.id: p for p in store.prompts()}
    rows = []
    for pair in pairs:
        prompt = prompts[pair.prompt_id]
        rows.append({"prompt": lm.prompt(prompt.text, prompt.speaker),
                     "chosen": lm.completion(samples[pair.chosen_sample_id].tokens),
                     "rejected": lm.completion(samples[pair.rejected_sample_id].tokens)})
    if not rows:
        raise RuntimeError(f"round {round_id} has no pairs to train on; run the pairs stage first")
    return Dataset.from_list(rows)


def embedding_module_names(model) -> list[str]:
    """Names of the input embedding and output layer, for PEFT's modules_to_save."""
    wanted = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    return sorted({name.split(".")[-1] for name, module in model.named_modules() if id(module) in wanted})


@stage
def train(ctx: RoundContext, pairs: Pairs) -> Trained:
    """DPO on the round's pairs, in this process or in train.processes processes under `accelerate launch`."""
    cfg = ctx.cfg
    label = f"campaign {cfg.campaign.name} round {ctx.number} ({pairs.pairs + pairs.human_pairs} pairs)"
    release_policies()  # the input policy generation held: training loads its own copy
    with ExitStack() as held:  # the lock of every GPU the run uses, always in the same order
        locks = [held.enter_context(HostTrainingLock(label, device)) for device in training_devices(cfg)]
        if cfg.train.processes > 1:
            from speechalign.tasks.train_launch import launch_dpo  # noqa: PLC0415 - it imports this module

            result = launch_dpo(cfg, ctx.round.id)
        else:
            result = run_dpo(cfg, ctx.round.id)
    return dataclasses.replace(result, waited_for_host_lock_s=round(sum(lock.waited_s for lock in locks), 1))


def training_devices(cfg: Config) -> list[str]:
    if cfg.train.processes > 1 and torch.cuda.is_available():
        return [f"cuda{i}" for i in range(min(cfg.train.processes, torch.cuda.device_count()))]
    return [device_name()]


def run_dpo(cfg: Config, round_id: int) -> Trained | None:
    """DPO on the round's pairs; in a multi-process run, every process trains and the main one saves
    and returns the result (the others return None)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # PEFT looks for the Hub when saving otherwise
    store = open_store(cfg.store_url)
    rnd = store.round(round_id)
    layout = cfg.layout
    policy_dir, adapter_dir = layout.policy(rnd.number), layout.adapter(rnd.number)
    lm = load_codec_lm(rnd.policy_in, for_training=True, **load_options(cfg.model))
    t = cfg.train
    quantized = cfg.model.quantization != "none"
    if quantized:  # QLoRA: the adapter trains in the compute dtype on frozen 8-/4-bit weights
        from peft import prepare_model_for_kbit_training  # noqa: PLC0415

        lm.model = prepare_model_for_kbit_training(lm.model, use_gradient_checkpointing=t.gradient_checkpointing)
    dataset = preference_dataset(store, round_id, lm)
    precision = decide_precision(cfg.model.dtype)
    lora = LoraConfig(
        r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout, task_type="CAUSAL_LM",
        target_modules=lora_target_modules(t),
        modules_to_save=embedding_module_names(lm.model) if train_embeddings(cfg, lm) else None,
    )
    args = DPOConfig(
        output_dir=str(layout.trainer_output(rnd.number)), num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate, beta=t.beta,
        loss_type=t.loss_type, loss_weights=t.loss_weights or None, max_length=t.max_length,
        lr_scheduler_type="constant_with_warmup", warmup_steps=min(5, len(dataset) // t.batch_size),
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, seed=t.seed,
        **precision.trainer_flags(), gradient_checkpointing=t.gradient_checkpointing,
        dataloader_num_workers=0, remove_unused_columns=False,
    )
    ref_model = None
    if t.reference == "initial":
        # the campaign's base model, frozen: in the inference dtype, never an fp32 copy of a bf16 model
        ref_model = load_codec_lm(campaign_base(cfg, store, rnd.campaign_id), precision=precision).model
    progress = TrainingProgress("train", ("loss", "rewards/accuracies", "rewards/margins"))
    trainer = DPOTrainer(model=lm.model, ref_model=ref_model, args=args, train_dataset=dataset,
                         processing_class=lm.tokenizer, peft_config=lora, callbacks=[progress])
    trainer.remove_callback(PrinterCallback)  # one line per step is too much; TrainingProgress logs every 10
    output = trainer.train()
    if not trainer.accelerator.is_main_process:
        return None
    history = [{k: h[k] for k in ("step", *DPO_METRICS) if k in h}
               for h in trainer.state.log_history if "rewards/accuracies" in h]
    save_round_policy(cfg, rnd, trainer, lm, precision)
    tail = history[-max(1, len(history) // 4):]
    return Trained(
        policy=str(policy_dir), adapter=str(adapter_dir), pairs=len(dataset), steps=int(trainer.state.global_step),
        precision=precision.name, runtime_s=float(output.metrics.get("train_runtime", 0.0)), reference=t.reference,
        processes=trainer.accelerator.num_processes, method="dpo",
        final={k: statistics.fmean(h[k] for h in tail if k in h) for k in DPO_METRICS if any(k in h for h in tail)},
        history=history)


def lora_target_modules(t) -> str | list[str]:
    return t.target_modules[0] if t.target_modules == ["all-linear"] else t.target_modules


def train_embeddings(cfg: Config, lm: CodecLM) -> bool:
    """Whether the input embedding and output layer train too (PEFT's modules_to_save): train.train_embeddings, or
    on "auto" when bootstrap added speech tokens to the model and no SFT trained their rows."""
    t = cfg.train.train_embeddings
    return t == "true" or (t == "auto" and lm.metadata.get("added_tokens", 0) > 0 and not lm.metadata.get("sft"))


def save_round_policy(cfg: Config, rnd, trainer, lm: CodecLM, precision: Precision) -> None:
    """The round's LoRA adapter, and its merged policy: the next round's input, written under a temporary name and
    renamed, so the policy directory appears complete or not at all."""
    policy_dir, adapter_dir = cfg.layout.policy(rnd.number), cfg.layout.adapter(rnd.number)
    trainer.model.save_pretrained(adapter_dir)
    if cfg.model.quantization != "none":  # 8-/4-bit weights cannot take the adapter: merged into the input policy
        merged = merged_lineage(rnd.policy_in, [str(adapter_dir)], precision).model
    else:  # saved in the dtype it is served in (fp32 master weights train on a GPU without bf16)
        merged = trainer.model.merge_and_unload().to(precision.inference)
    metadata = {**lm.metadata, "parent": rnd.policy_in, "round": rnd.number,
                "lineage": lineage_after(rnd.policy_in, lm.metadata, str(adapter_dir))}
    tmp = policy_dir.with_name("policy.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    CodecLM(merged, lm.tokenizer, metadata).save(tmp, cfg.model.max_shard_size)
    shutil.rmtree(policy_dir, ignore_errors=True)
    tmp.rename(policy_dir)


def campaign_base(cfg: Config, store: PreferenceStore, campaign_id: int) -> str:
    campaign = store.campaign(cfg.campaign.name)
    if campaign is None or campaign.id != campaign_id:
        raise RuntimeError(f"campaign {cfg.campaign.name!r} is not the one round belongs to")
    return campaign.base_model_path
