"""Decode: samples become 16 kHz WAVs under the round's directory, when something will listen to them.

Layer-1 units -> acoustic stage -> codec decoder (models/speech.py). Held-out samples are always decoded
(every held-out metric and the listening page use them). A round's golden and candidate samples are
decoded only when a metric that needs audio scores them (tasks/score.py `candidate_metrics`: the pair
criterion ranks by it, or score.candidates = "all"); under golden_vs_synthetic nothing ranks candidates
by their sound, and the listening page decodes the few it plays when it draws them.

The WAV's path goes into the sample's `audio_path`; a resumed stage decodes only samples whose file is
not there yet, and each file is written under a temporary name and renamed, so a killed stage never
leaves half a WAV. A sample that cannot be decoded is named in the result (`failed`) and left without
audio; the others are decoded.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import soundfile as sf

from speechalign.config import Config
from speechalign.faults import fault_point
from speechalign.layout import Layout
from speechalign.models.acoustic import load_acoustic
from speechalign.models.codec import load_codec
from speechalign.models.codec_lm import METADATA_FILE, expand_runs
from speechalign.models.metrics import needs_audio
from speechalign.models.speech import Synthesizer
from speechalign.preference_store.schema import Sample
from speechalign.preference_store.store import PreferenceStore
from speechalign.tasks.context import RoundContext
from speechalign.tasks.progress import Progress
from speechalign.tasks.results import Audio, Candidates
from speechalign.tasks.score import candidate_metrics
from speechalign.tasks.stage import stage

log = logging.getLogger(__name__)
KINDS = ("golden", "candidate", "heldout", "probe")


@stage
def decode(ctx: RoundContext, candidates: Candidates) -> Audio:
    if not needs_audio(candidate_metrics(ctx.cfg)):
        log.info("decode: no metric listens to round %d's candidates (pairs.criterion %s); none decoded",
                 ctx.number, ctx.cfg.pairs.criterion)
        return Audio(sample_ids=candidates.sample_ids, decoded=0, skipped=len(candidates.sample_ids))
    return decode_samples(ctx.cfg, ctx.store, ctx.number, candidates.sample_ids)


def decode_samples(cfg: Config, store: PreferenceStore, number: int, sample_ids: Iterable[int]) -> Audio:
    """Decode the samples (of round `number`) that have no WAV yet, in batches."""
    ids = tuple(sample_ids)
    prompts = {p.id: p for p in store.prompts()}
    frames = unit_frames(cfg)
    silent = [s for s in store.samples_by_id(ids).values() if not (s.audio_path and Path(s.audio_path).is_file())]
    samples = decode_order(silent, frames)
    if not samples:
        return Audio(sample_ids=ids, decoded=0, skipped=0)
    synth = synthesizer(cfg)
    batch_size = cfg.codec.decode_batch_size
    started, seconds, failed = time.monotonic(), 0.0, {}
    batches = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    with Progress(f"decode: {len(samples)} samples of round {number} to WAV", len(samples), "sample") as progress:
        for batch in batches:
            paths = write_batch(cfg.layout, synth, number, batch, prompts, failed, frames)
            store.set_audio_paths(paths)
            seconds += sum(sf.info(p).frames for p in paths.values()) / synth.sample_rate
            progress.advance(len(batch))
            fault_point("decode", "mid")
    wall = time.monotonic() - started
    return Audio(sample_ids=ids, decoded=len(samples) - len(failed), skipped=0, failed=failed,
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


def write_batch(layout: Layout, synth: Synthesizer, number: int, batch: list[Sample], prompts: dict,
                failed: dict[str, str], frames=lambda s: s.tokens) -> dict[int, str]:
    """Decode one batch to WAV files; a sample that fails is recorded in `failed` (the rest go on)."""
    wavs = synth.synthesize_each([frames(s) for s in batch], [prompts[s.prompt_id].speaker for s in batch],
                                 len(batch))
    paths = {}
    for s, wav in zip(batch, wavs):
        utterance = prompts[s.prompt_id].utterance_id
        if isinstance(wav, Exception):
            failed[str(s.id)] = f"{s.kind} sample k={s.k} of {utterance}: {wav.__class__.__name__}: {wav}"
            log.warning("decode: %s", failed[str(s.id)])
            continue
        path = layout.audio_file(number, s.kind, s.prompt_id, utterance, s.k)
        write_wav(path, wav, synth.sample_rate)
        paths[s.id] = str(path)
    return paths


@lru_cache(maxsize=2)
def _synthesizer(codec_config: str, codec_checkpoint: str, acoustic: str | None) -> Synthesizer:
    return Synthesizer(load_codec(Path(codec_config), Path(codec_checkpoint)),
                       load_acoustic(Path(acoustic)) if acoustic else None)


def synthesizer(cfg: Config) -> Synthesizer:
    """The campaign's units-to-audio path, loaded once per worker process."""
    acoustic = str(cfg.layout.acoustic) if cfg.codec.acoustic == "model" else None
    return _synthesizer(*map(str, cfg.codec.files()), acoustic)


def write_wav(path: Path, audio, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    sf.write(str(tmp), audio, sample_rate, subtype="PCM_16", format="WAV")
    tmp.replace(path)
