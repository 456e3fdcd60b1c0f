"""Decode: samples become WAVs at the codec's rate under the round's directory, when something will listen to them.

    decode              a round's golden and candidate samples, only when a metric that needs audio scores them
                        (tasks/score.py `candidate_metrics`: the pair criterion ranks by it, or score.candidates =
                        "all"); under golden_vs_synthetic nothing ranks candidates by their sound, and the listening
                        page decodes the few it plays when it draws them
    decode_heldout      the held-out and probe samples, always (every held-out metric and the listening page use them)

Units -> the codec plug-in (models/codecs/): for SpeechTokenizer the acoustic stage and the codec's decoder
(models/speechtokenizer/synthesizer.py), for a transformers codec the units unflattened into codes and decoded; WAVs at
the codec's output rate, batched by `write_wavs`, which the ceiling's golden tokens (bootstrap/ceiling.py) go through
too.

The WAV's path goes into the sample's `audio_path`; a resumed stage decodes only samples whose file is
not there yet, and each file is written under a temporary name and renamed, so a killed stage never
leaves half a WAV. A sample that cannot be decoded is named in the result (`failed`) and left without
audio; the others are decoded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from speechalign.config import Config
from speechalign.models.codec_lm import METADATA_FILE, expand_runs
from speechalign.models.codecs import Codec, open_codec
from speechalign.models.metrics import needs_audio
from speechalign.preference_store.schema import Sample
from speechalign.preference_store.store import PreferenceStore
from speechalign.runtime.context import RoundContext
from speechalign.runtime.faults import fault_point
from speechalign.runtime.progress import Progress
from speechalign.runtime.results import Audio, Candidates, HeldoutAudio, HeldoutSamples
from speechalign.runtime.stage import stage
from speechalign.tasks.score import candidate_metrics

log = logging.getLogger(__name__)
KINDS = ("golden", "candidate", "heldout", "probe", "test", "rollout")  # every kind of sample decoded


@stage
def decode(ctx: RoundContext, candidates: Candidates) -> Audio:
    if not needs_audio(candidate_metrics(ctx.cfg)):
        log.info("decode: no metric listens to round %d's candidates (pairs.criterion %s); none decoded",
                 ctx.number, ctx.cfg.pairs.criterion)
        return Audio(sample_ids=candidates.sample_ids, decoded=0, skipped=len(candidates.sample_ids))
    return decode_samples(ctx.cfg, ctx.store, ctx.number, candidates.sample_ids)


@stage
def decode_heldout(ctx: RoundContext, samples: HeldoutSamples) -> HeldoutAudio:
    decoded = decode_samples(ctx.cfg, ctx.store, ctx.number, samples.sample_ids, "decode_heldout")
    return HeldoutAudio(**{f.name: getattr(decoded, f.name) for f in dataclasses.fields(decoded)})


def decode_samples(cfg: Config, store: PreferenceStore, number: int, sample_ids: Iterable[int],
                   stage_name: str = "decode") -> Audio:
    """Decode the samples (of round `number`) that have no WAV yet, in batches; each batch's paths go to the store
    as it is written."""
    ids = tuple(sample_ids)
    prompts = {p.id: p for p in store.prompts()}
    frames = unit_frames(cfg)
    silent = [s for s in store.samples_by_id(ids).values() if not (s.audio_path and Path(s.audio_path).is_file())]
    samples = decode_order(silent, frames)
    if not samples:
        return Audio(sample_ids=ids, decoded=0, skipped=0)
    synth = synthesizer(cfg)
    started, seconds = time.monotonic(), 0.0
    jobs = [WavJob(frames(s), prompts[s.prompt_id].speaker,
                   cfg.layout.audio_file(number, s.kind, s.prompt_id, prompts[s.prompt_id].utterance_id, s.k),
                   f"{s.kind} sample k={s.k} of {prompts[s.prompt_id].utterance_id}") for s in samples]

    def written(batch: dict[int, str]) -> None:
        nonlocal seconds
        store.set_audio_paths({samples[i].id: path for i, path in batch.items()})
        seconds += sum(sf.info(p).frames for p in batch.values()) / synth.output_sample_rate
        fault_point(stage_name, "mid")

    with Progress(f"{stage_name}: {len(samples)} samples of round {number} to WAV", len(samples), "sample") as bar:
        failures = write_wavs(synth, jobs, cfg.codec.decode_batch_size, written, bar)
    wall = time.monotonic() - started
    return Audio(sample_ids=ids, decoded=len(samples) - len(failures), skipped=0,
                 failed={str(samples[i].id): why for i, why in failures.items()},
                 audio_seconds=round(seconds, 1), seconds=round(wall, 1),
                 real_time_factor=round(wall / seconds, 4) if seconds else None)


def decode_order(samples: list[Sample], frames) -> list[Sample]:
    """The order samples are decoded in, cut into batches as it goes: by length, so a batch's sequences are of
    similar length (padding is decoder work thrown away: a third of it in the demo's held-out set in prompt
    order, benchmarks/decode_order.py), then by kind, prompt and index, never by id (a batch's padding touches
    its sequences' last frames, so the order must not depend on how the store numbered them)."""
    return sorted(samples, key=lambda s: (len(frames(s)), KINDS.index(s.kind), s.prompt_id, s.k))


def decode_for_listening(cfg: Config, store: PreferenceStore, samples: list[Sample]) -> dict[int, str]:
    """WAVs of samples a listening test drew that nothing decoded before; {sample id: path} of those decoded."""
    by_round: dict[int, list[int]] = {}
    for s in samples:
        by_round.setdefault(s.round_id, []).append(s.id)
    for round_id, ids in by_round.items():
        decode_samples(cfg, store, store.round(round_id).number, ids)
    decoded = store.samples_by_id(s.id for s in samples)
    return {i: s.audio_path for i, s in decoded.items() if s.audio_path}


def unit_frames(cfg: Config):
    """A sample's units as codec frames: as they are, or, from a model that writes deduplicated units
    (model.deduplicate), each held for the golden units' mean run length (in the base model's metadata)."""
    if not cfg.model.deduplicate:
        return lambda s: s.tokens
    run = json.loads((cfg.layout.base_model / METADATA_FILE).read_text())["mean_unit_run"]
    return lambda s: s.tokens if s.kind == "golden" else expand_runs(s.tokens, run)


@dataclass(frozen=True)
class WavJob:
    units: list[int]  # as codec frames
    speaker: str | None
    path: Path
    label: str  # names it in a failure


def write_wavs(synth: Codec, jobs: list[WavJob], batch_size: int, written=None,
               progress: Progress | None = None) -> dict[int, str]:
    """Decode `jobs` in batches of `batch_size`, in the order given (a batch's padding touches its sequences' last
    frames, so the order is part of the result), and write each WAV; `written({job index: path})` is told after each
    batch. A job that cannot be decoded costs only itself: {job index: why} of those that failed."""
    failures: dict[int, str] = {}
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        wavs = synth.synthesize_each([j.units for j in batch], [j.speaker for j in batch], len(batch))
        paths = {}
        for i, (job, wav) in enumerate(zip(batch, wavs), start=start):
            if isinstance(wav, Exception):
                failures[i] = f"{job.label}: {wav.__class__.__name__}: {wav}"
                log.warning("decode: %s", failures[i])
                continue
            write_wav(job.path, wav, synth.output_sample_rate)
            paths[i] = str(job.path)
        if written:
            written(paths)
        if progress:
            progress.advance(len(batch))
    return failures


def synthesizer(cfg: Config) -> Codec:
    """The campaign's units-to-audio path (the codec plug-in, with SpeechTokenizer's acoustic stage when it decodes
    through one), loaded once per worker process."""
    return open_codec(cfg)


def write_wav(path: Path, audio, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    sf.write(str(tmp), audio, sample_rate, subtype="PCM_16", format="WAV")
    tmp.replace(path)
