"""Train online: GRPO with a LoRA adapter (TRL + PEFT) on the policy's own samples, rewarded by the metric plug-ins.

    the round's train prompts ─► GRPOTrainer: each step samples [online] num_generations rollouts for each of
    [online] prompts_per_step prompts (units only, as every generation) ─► RolloutScorer: the batch decoded to audio
    once, through the campaign's decoding path, and scored once by every plug-in the reward weighs ─► the rewards
    (speechalign/rewards.py), one TRL reward function per weighted value ─► group-relative advantages ─► the update

Groups whose rewards are all equal carry no advantage: they add nothing to the update, and the round reports their
share (`grpo/frac_reward_zero_std`). With [online] beta > 0 the KL term's reference is the adapter-disabled policy,
the round's input policy. Every rollout is a sample of the round (kind "rollout", k its place in the round's
stream of rollouts: step x rollouts a step + its place in the step), with its metric values and its reward as
scores: a round's rollouts can be read, listened to and compared like its candidates.

Training saves a checkpoint every [online] save_steps steps under the round's grpo/ folder; a stage that ran again
after a kill resumes from the last one, and the rollouts the store holds beyond it are deleted first, so every
rollout the policy trained on is recorded once.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import time
from pathlib import Path

from datasets import Dataset
from peft import LoraConfig
from transformers import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig, GRPOTrainer

from speechalign.config import Config
from speechalign.models.codec_lm import CodecLM, load_codec_lm, load_options, release_policies
from speechalign.models.codecs import codec_flattening, golden_units
from speechalign.models.metrics import ScoreItem, get_metric, plugins_for
from speechalign.models.precision import decide_precision
from speechalign.preference_store.schema import Prompt
from speechalign.preference_store.store import PreferenceStore
from speechalign.rewards import Reward
from speechalign.runtime.context import RoundContext
from speechalign.runtime.host_lock import HostTrainingLock
from speechalign.runtime.results import Trained
from speechalign.runtime.stage import stage
from speechalign.runtime.training_progress import TrainingProgress
from speechalign.tasks.decode import WavJob, synthesizer, write_wavs
from speechalign.tasks.generate import round_prompts
from speechalign.tasks.score import score_items
from speechalign.tasks.train import embedding_module_names, lora_target_modules, save_round_policy, train_embeddings

log = logging.getLogger(__name__)
KEEP_AUDIO = 8  # rollouts of the round's last step whose WAVs stay (MLflow plays them); the others are deleted
GRPO_METRICS = ("loss", "reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "completions/mean_length",
                "completions/clipped_ratio", "grad_norm", "step_time", "online/decode_s", "online/score_s",
                "online/reward_s")


class RolloutScorer:
    """Decodes and scores a batch of rollouts once, however many reward functions ask, and records each rollout.

    TRL calls its reward functions one after another with the same `completion_ids` list; the first call of a step
    does the work, the others read it (`component(name)` makes one reward function per weighted value)."""

    def __init__(self, cfg: Config, ctx: RoundContext, lm: CodecLM, prompts: dict[int, Prompt], reward: Reward,
                 rollouts_per_step: int):
        self.cfg, self.ctx, self.lm, self.prompts, self.reward = cfg, ctx, lm, prompts, reward
        self.rollouts_per_step = rollouts_per_step
        self.metrics = plugins_for(reward.values)
        self.listens = any(get_metric(name, cfg.score).needs_audio for name in self.metrics)
        self.synth = synthesizer(cfg) if self.listens else None
        self.flattening = codec_flattening(cfg.codec)
        self._key: tuple | None = None
        self._components: dict[str, list[float]] = {}
        self.seconds = {"decode": 0.0, "score": 0.0}

    def component(self, name: str):
        def reward(prompts, completions, completion_ids, prompt_id, trainer_state, log_metric=None, **_):
            key = (id(completion_ids), trainer_state.global_step)
            if key != self._key:
                self._components = self.score(completion_ids, prompt_id, trainer_state.global_step, log_metric)
                self._key = key
            return self._components[name]

        reward.__name__ = name  # TRL logs rewards/<name>/mean
        return reward

    def score(self, completion_ids: list[list[int]], prompt_ids: list[int], step: int, log_metric=None):
        started = time.monotonic()
        generated = [self.lm.ids_to_units(ids) for ids in completion_ids]
        golden = [golden_units(self.prompts[p].golden_tokens, self.flattening) for p in prompt_ids]
        first = step * self.rollouts_per_step
        store, round_id = self.ctx.store, self.ctx.round.id
        g = self.cfg.online.num_generations
        store.add_samples([{"round_id": round_id, "prompt_id": p, "kind": "rollout", "k": first + i, "tokens": units,
                            "finished": finished, "seed": None,
                            "sampling": {"step": step, "group": i // g, "temperature": self.cfg.generate.temperature}}
                           for i, (p, (units, finished)) in enumerate(zip(prompt_ids, generated))])
        samples = {s.k: s for s in store.samples(round_id, "rollout") if first <= s.k < first + len(prompt_ids)}
        # a degenerate rollout's reward is 0 whatever it sounds like: it is neither decoded nor scored
        heard = [i for i, ((units, finished), gold) in enumerate(zip(generated, golden))
                 if not self.reward.degenerate(len(units), len(gold), finished)]
        wavs = self.decode(step, prompt_ids, generated, heard) if self.listens else {}  # units alone: no audio
        decoded = time.monotonic()
        values = self.values(prompt_ids, generated, golden, heard, wavs)
        scored = time.monotonic()
        components = [self.reward.components(v, len(units), len(gold), finished)
                      for v, (units, finished), gold in zip(values, generated, golden)]
        totals = [self.reward.total(c) for c in components]
        store.add_scores([{"sample_id": samples[first + i].id, "metric": metric, "value": value, "error": None}
                          for i, (v, total) in enumerate(zip(values, totals))
                          for metric, value in {**v, "reward": total}.items() if value is not None])
        self.keep_few(step, wavs, samples, first)
        self.seconds["decode"] += decoded - started
        self.seconds["score"] += scored - decoded
        if log_metric:
            log_metric("online/decode_s", decoded - started)
            log_metric("online/score_s", scored - decoded)
            log_metric("online/reward_s", time.monotonic() - started)
        return {name: [c[name] for c in components] for name in self.reward.weights}

    def decode(self, step: int, prompt_ids: list[int], generated, rows: list[int]) -> dict[int, str]:
        """The WAVs of the batch's `rows`, {row: path}: each decoded once, in batches of codec.decode_batch_size."""
        folder = self.ctx.layout.round_dir(self.ctx.number) / "audio" / "rollout"
        jobs = [WavJob(generated[i][0], self.prompts[prompt_ids[i]].speaker,
                       folder / f"step{step:04d}_r{i:03d}_p{prompt_ids[i]}.wav", f"rollout {i} of step {step}")
                for i in rows]
        failures = write_wavs(self.synth, jobs, self.cfg.codec.decode_batch_size)
        return {rows[j]: str(job.path) for j, job in enumerate(jobs) if j not in failures}

    def values(self, prompt_ids, generated, golden, rows: list[int],
               wavs: dict[int, str]) -> list[dict[str, float | None]]:
        """Every plug-in the reward weighs, once, on the batch's `rows` (a row without audio: None)."""
        out: list[dict[str, float | None]] = [{} for _ in prompt_ids]
        items = [ScoreItem(tokens=units, golden_tokens=gold, text=self.prompts[p].text, audio_path=wavs.get(i),
                           golden_audio_path=self.prompts[p].golden_audio_path, speaker=self.prompts[p].speaker)
                 for i, (p, (units, _), gold) in enumerate(zip(prompt_ids, generated, golden))]
        for name in self.metrics:
            metric = get_metric(name, self.cfg.score)
            heard = [i for i in rows if wavs.get(i) or not metric.needs_audio]
            results = score_items(metric, [items[i] for i in heard], [f"rollout {i}" for i in heard])
            for i, result in zip(heard, results):
                out[i].update(dict.fromkeys(metric.outputs) if isinstance(result, Exception) else result)
        return [{v: row.get(v) for v in self.reward.values} for row in out]

    def keep_few(self, step: int, wavs: dict[int, str], samples, first: int) -> None:
        """Keep the first rollouts' WAVs (a step's first groups, the last step's are logged to MLflow); delete the
        rest, which the scores have heard."""
        kept = {}
        for i, path in wavs.items():
            if i < KEEP_AUDIO:
                kept[samples[first + i].id] = path
            else:
                Path(path).unlink(missing_ok=True)
        self.ctx.store.set_audio_paths(kept)


@stage
def train_online(ctx: RoundContext) -> Trained:
    """GRPO on the round's train prompts (see the module's docstring)."""
    cfg, store = ctx.cfg, ctx.store
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    release_policies()
    o, t = cfg.online, cfg.train
    prompts = round_prompts(cfg, store, ctx.number)
    precision = decide_precision(cfg.model.dtype)
    lm = load_codec_lm(ctx.round.policy_in, for_training=True, **load_options(cfg.model))
    reward = Reward.from_config(cfg.reward)
    rollouts_per_step = o.num_generations * o.prompts_per_step
    out = cfg.layout.trainer_output(ctx.number).with_name("grpo")
    resume = get_last_checkpoint(str(out)) if out.is_dir() else None
    done_steps = int(Path(resume).name.split("-")[-1]) if resume else 0
    forget_rollouts_after(store, ctx, done_steps * rollouts_per_step)
    scorer = RolloutScorer(cfg, ctx, lm, {p.id: p for p in store.prompts()}, reward, rollouts_per_step)
    dataset = Dataset.from_list([{"prompt": lm.prompt(p.text, p.speaker), "prompt_id": p.id} for p in prompts])
    g = cfg.generate
    args = GRPOConfig(
        output_dir=str(out), num_train_epochs=t.epochs, per_device_train_batch_size=rollouts_per_step,
        gradient_accumulation_steps=1, num_generations=o.num_generations, max_completion_length=g.max_new_tokens,
        temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
        generation_kwargs={"suppress_tokens": lm.non_speech_ids(), "eos_token_id": lm.stop_ids()},
        loss_type=o.loss_type, scale_rewards=o.scale_rewards, beta=o.beta, learning_rate=t.learning_rate,
        reward_weights=reward.normalised_weights(), lr_scheduler_type="constant_with_warmup",
        warmup_steps=min(2, len(prompts) // o.prompts_per_step), logging_steps=1, save_strategy="steps",
        save_steps=o.save_steps, save_total_limit=1, report_to=[], disable_tqdm=True, seed=t.seed,
        gradient_checkpointing=t.gradient_checkpointing, dataloader_num_workers=0, remove_unused_columns=False,
        **precision.trainer_flags(),
    )
    lora = LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout, task_type="CAUSAL_LM",
                      target_modules=lora_target_modules(t),
                      modules_to_save=embedding_module_names(lm.model) if train_embeddings(cfg, lm) else None,
                      ensure_weight_tying=True)
    progress = TrainingProgress("train", ("reward", "reward_std", "completions/mean_length"))
    trainer = GRPOTrainer(model=lm.model, reward_funcs=[scorer.component(n) for n in reward.weights], args=args,
                          train_dataset=dataset, processing_class=lm.tokenizer, peft_config=lora, callbacks=[progress])
    trainer.remove_callback(PrinterCallback)
    with HostTrainingLock(f"campaign {cfg.campaign.name} round {ctx.number} (online)"):
        output = trainer.train(resume_from_checkpoint=resume)
    history = [{k: h[k] for k in ("step", *GRPO_METRICS, *(f"rewards/{n}/mean" for n in reward.weights)) if k in h}
               for h in trainer.state.log_history if "reward" in h]
    save_round_policy(cfg, ctx.round, trainer, lm, precision)
    shutil.rmtree(out, ignore_errors=True)  # the checkpoints: the adapter and the merged policy are saved
    tail = history[-max(1, len(history) // 4):]
    keys = sorted({k for h in tail for k in h} - {"step"})
    return Trained(
        policy=str(cfg.layout.policy(ctx.number)), adapter=str(cfg.layout.adapter(ctx.number)),
        pairs=store.count_samples(ctx.round.id, "rollout"), steps=int(trainer.state.global_step),
        precision=precision.name, runtime_s=float(output.metrics.get("train_runtime", 0.0)), reference="previous",
        method="grpo", final={k: statistics.fmean(h[k] for h in tail if k in h) for k in keys}, history=history)


def forget_rollouts_after(store: PreferenceStore, ctx: RoundContext, first: int) -> None:
    """Delete the round's rollouts from `first` on, with their scores and WAVs: a resumed training makes them again
    from its last checkpoint, and the store keeps only what the policy trained on."""
    for path in store.delete_samples(ctx.round.id, "rollout", min_k=first):
        Path(path).unlink(missing_ok=True)
