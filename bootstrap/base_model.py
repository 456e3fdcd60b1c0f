"""The initial policy: the demo's small Llama or a user's HF model, fine-tuned on golden tokens.

SpeechAlign starts from a codec LM trained on golden tokens; bootstrap makes it here with TRL's
SFTTrainer on the 'sft' split (prompt = text, completion = golden layer-1 units, loss on the
completion only), in full or with LoRA (model.sft_method). With `model.sft_epochs = 0` a user's model
is taken as it is.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict

from datasets import Dataset
from peft import LoraConfig
from transformers import PrinterCallback
from trl import SFTConfig, SFTTrainer

from speechalign.config import Config
from speechalign.models.codec_lm import (
    CodecLM,
    build_demo_model,
    build_demo_tokenizer,
    load_user_model,
    mean_run,
    speech_format,
)
from speechalign.models.codecs import Flattening, codec_flattening, golden_units
from speechalign.models.precision import decide_precision
from speechalign.preference_store.schema import Prompt
from speechalign.runtime.training_progress import TrainingProgress
from speechalign.tasks.train import embedding_module_names, lora_target_modules

log = logging.getLogger(__name__)


def initial_model(cfg: Config, flattening: Flattening, speakers: list[str],
                  golden: list[list[int]]) -> CodecLM:
    """The user's model with the speech tokens it lacks, or the demo's built from scratch; its metadata also
    holds the golden units' mean run length, which decoding a deduplicating model's units needs, and, for a codec
    whose units interleave several codebooks, the flattening (generation keeps to its frames' order)."""
    m, fmt = cfg.model, speech_format(cfg.model)
    codebook_size = flattening.units  # the LM's units: every codebook it speaks
    if m.base_model:
        # never quantized: the base model is saved, and rounds merge adapters into it (QLoRA is the rounds' choice)
        lm = load_user_model(m.base_model, codebook_size, speakers, fmt, dtype=decide_precision(m.dtype).training)
        log.info("bootstrap: %s: %d speech tokens added to its vocabulary (%s)", m.base_model,
                 lm.metadata["added_tokens"], "none: its format matches" if not lm.metadata["added_tokens"]
                 else "new embeddings: they train with the model")
    else:
        tokenizer = build_demo_tokenizer(codebook_size, speakers if m.speaker_in_prompt else [], fmt)
        model = build_demo_model(tokenizer, m.layers, m.hidden_size, m.heads, m.max_positions, m.seed)
        lm = CodecLM(model, tokenizer, {"codebook_size": codebook_size, "speaker_in_prompt": m.speaker_in_prompt,
                                        "added_tokens": 0, "source": "demo", "format": asdict(fmt)})
    lm.metadata["mean_unit_run"] = mean_run(golden)
    if flattening.codebooks > 1:
        lm.metadata["frame"] = {"codebooks": flattening.codebooks, "codebook_size": flattening.codebook_size}
    return lm


def supervised_finetune(cfg: Config, lm: CodecLM, prompts: list[Prompt], out_dir: str) -> dict:
    """Fine-tuning on the golden units of the 'sft' split, in full or with a LoRA adapter merged after
    (model.sft_method); returns the training figures."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    m, flattening = cfg.model, codec_flattening(cfg.codec)
    data = Dataset.from_list([{"prompt": lm.prompt(p.text, p.speaker),
                               "completion": lm.completion(golden_units(p.golden_tokens, flattening))}
                              for p in prompts])
    args = SFTConfig(
        output_dir=out_dir, num_train_epochs=m.sft_epochs, per_device_train_batch_size=m.sft_batch_size,
        learning_rate=m.sft_learning_rate, lr_scheduler_type="cosine", warmup_steps=10, logging_steps=10,
        save_strategy="no", report_to=[], disable_tqdm=True, **decide_precision(m.dtype).trainer_flags(),
        max_length=m.max_positions,
        gradient_checkpointing=cfg.train.gradient_checkpointing, seed=m.seed, dataloader_num_workers=0,
    )
    lora = None
    if m.sft_method == "lora":
        t = cfg.train
        lora = LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout, task_type="CAUSAL_LM",
                          target_modules=lora_target_modules(t), modules_to_save=embedding_module_names(lm.model)
                          if lm.metadata.get("added_tokens", 0) > 0 else None)
    progress = TrainingProgress("bootstrap SFT", ("loss", "mean_token_accuracy"))
    trainer = SFTTrainer(model=lm.model, args=args, train_dataset=data, processing_class=lm.tokenizer,
                         peft_config=lora, callbacks=[progress])
    trainer.remove_callback(PrinterCallback)
    output = trainer.train()
    if lora is not None:
        lm.model = trainer.model.merge_and_unload()
    logs = [h for h in trainer.state.log_history if "mean_token_accuracy" in h]
    result = {"method": m.sft_method, "epochs": m.sft_epochs, "steps": int(trainer.state.global_step),
              "utterances": len(prompts), "train_loss": float(output.training_loss),
              "runtime_s": float(output.metrics.get("train_runtime", 0)),
              "final_token_accuracy": float(logs[-1]["mean_token_accuracy"]) if logs else None}
    log.info("bootstrap: SFT %s", result)
    return result
