"""Decode: every sample of the round becomes a 16 kHz WAV under the round's directory.

Layer-1 units -> acoustic stage -> codec decoder (models/speech.py). The WAV's path goes into the
sample's `audio_path`; a resumed stage decodes only samples whose file is not there yet, and each
file is written under a temporary name and renamed, so a killed stage never leaves half a WAV. A
sample that cannot be decoded is named in the stage's result (`failed`) and left without audio;
the others are decoded.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import soundfile as sf

from speechalign.config import Config
from speechalign.models.acoustic import load_acoustic
from speechalign.models.codec import load_codec
from speechalign.models.speech import Synthesizer
from speechalign.tasks.import_corpus import safe_name
from speechalign.tasks.progress import StageProgress
from speechalign.tasks.stage import fault_point, log, open_store, round_dir

ACOUSTIC_DIR = "models/acoustic"


def acoustic_dir(cfg: Config) -> Path:
    return cfg.workdir / ACOUSTIC_DIR


@lru_cache(maxsize=2)
def _synthesizer(codec_config: str, codec_checkpoint: str, acoustic: str | None) -> Synthesizer:
    return Synthesizer(load_codec(Path(codec_config), Path(codec_checkpoint)),
                       load_acoustic(Path(acoustic)) if acoustic else None)


def synthesizer(cfg: Config) -> Synthesizer:
    """The campaign's units-to-audio path, loaded once per worker process."""
    acoustic = str(acoustic_dir(cfg)) if cfg.codec.acoustic == "model" else None
    return _synthesizer(*map(str, cfg.codec_files()), acoustic)


def audio_file(cfg: Config, number: int, kind: str, prompt_id: int, utterance_id: str, k: int) -> Path:
    return round_dir(cfg, number) / "audio" / kind / f"p{prompt_id}_{safe_name(utterance_id)[:80]}_k{k}.wav"


def write_wav(path: Path, audio, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    sf.write(str(tmp), audio, sample_rate, subtype="PCM_16", format="WAV")
    tmp.replace(path)


def decode_samples(cfg: Config, round_id: int, kinds: tuple[str, ...] = ("golden", "candidate")) -> dict:
    store = open_store(cfg)
    number = store.round(round_id).number
    prompts = {p.id: p for p in store.prompts()}
    samples = [s for kind in kinds for s in store.samples(round_id, kind)
               if not (s.audio_path and Path(s.audio_path).is_file())]
    if not samples:
        return {"decoded": 0}
    synth = synthesizer(cfg)
    batch_size = cfg.codec.decode_batch_size
    progress = StageProgress("decode", f"decode: {len(samples)} samples of round {number} to WAV")
    started, seconds, failed = time.monotonic(), 0.0, {}
    batches = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    for n, batch in enumerate(batches, start=1):
        wavs = synth.synthesize_each([s.tokens for s in batch], [prompts[s.prompt_id].speaker for s in batch],
                                     batch_size)
        paths = {}
        for s, wav in zip(batch, wavs):
            utterance = prompts[s.prompt_id].utterance_id
            if isinstance(wav, Exception):  # recorded, and the rest of the round goes on without its audio
                failed[str(s.id)] = f"{s.kind} sample k={s.k} of {utterance}: {wav.__class__.__name__}: {wav}"
                log.warning("decode: %s", failed[str(s.id)])
                continue
            path = audio_file(cfg, number, s.kind, s.prompt_id, utterance, s.k)
            write_wav(path, wav, synth.sample_rate)
            paths[s.id] = str(path)
            seconds += len(wav) / synth.sample_rate
        store.set_audio_paths(paths)
        progress.update(n, len(batches))
        log.info("decode: batch %d/%d", n, len(batches))
        fault_point("decode", "mid")
    wall = time.monotonic() - started
    return {"decoded": len(samples) - len(failed), "failed": failed, "audio_seconds": round(seconds, 1),
            "seconds": round(wall, 1),
            "real_time_factor": round(wall / max(seconds, 1e-9), 4),
            "acoustic": cfg.codec.acoustic}
