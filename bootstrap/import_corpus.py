"""Import a corpus manifest: check every row, repair what can be repaired, encode golden tokens.

A bad row never stops the import: it is recorded in the store's `import_issues` with its line
number, its id and what to do about it, and the other rows go on.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from speechalign.layout import safe_name
from speechalign.models.audio import resample
from speechalign.models.codecs import as_codec
from speechalign.preference_store.store import PreferenceStore
from speechalign.runtime.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class Row:
    line: int
    utterance_id: str
    text: str
    speaker: str | None
    audio: np.ndarray
    audio_path: Path


@dataclass
class Problem:
    line: int
    utterance_id: str | None
    action: str  # skipped | resampled | downmixed
    problem: str

    def as_row(self, manifest: Path) -> dict:
        return {"manifest": str(manifest), "line": self.line, "utterance_id": self.utterance_id,
                "action": self.action, "problem": self.problem}

    def __str__(self) -> str:
        who = f" ({self.utterance_id})" if self.utterance_id else ""
        return f"line {self.line}{who}: {self.action}: {self.problem}"


def read_manifest(manifest: Path, sample_rate: int, min_seconds: float, max_seconds: float,
                  repaired_dir: Path) -> tuple[list[Row], list[Problem]]:
    """Parse and check every line; return the usable rows and what was wrong with the others."""
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} does not exist; give a JSONL file with one "
                                '{"id", "text", "audio", "speaker"?} object per line')
    rows: list[Row] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for line_no, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            problems.append(Problem(line_no, None, "skipped", f"malformed JSON ({exc}); fix the line to be one "
                                    '{"id", "text", "audio"} object'))
            continue
        utt = str(item.get("id", "")).strip() or None
        missing = [k for k in ("id", "text", "audio") if not str(item.get(k, "")).strip()]
        if missing:
            what = "empty text" if missing == ["text"] else f"missing or empty {', '.join(missing)}"
            problems.append(Problem(line_no, utt, "skipped", f"{what}; every row needs a non-empty id, text and audio"))
            continue
        if utt in seen:
            problems.append(Problem(line_no, utt, "skipped", "duplicate id; ids must be unique in a manifest"))
            continue
        path = Path(item["audio"])
        path = path if path.is_absolute() else manifest.parent / path
        audio, fixes = load_row_audio(path, sample_rate, line_no, utt, problems)
        if audio is None:
            continue
        seconds = len(audio) / sample_rate
        if not min_seconds <= seconds <= max_seconds:
            problems.append(Problem(line_no, utt, "skipped", f"audio is {seconds:.2f} s, outside [{min_seconds}, "
                                    f"{max_seconds}] s (corpus.min_seconds / corpus.max_seconds)"))
            continue
        if fixes:
            repaired_dir.mkdir(parents=True, exist_ok=True)
            path = repaired_dir / f"{safe_name(utt)}.wav"
            sf.write(path, audio, sample_rate, subtype="PCM_16")
        seen.add(utt)
        speaker = str(item["speaker"]).strip() if item.get("speaker") else None
        rows.append(Row(line_no, utt, str(item["text"]).strip(), speaker, audio, path.resolve()))
    return rows, problems


def load_row_audio(path: Path, sample_rate: int, line: int, utt: str,
                   problems: list[Problem]) -> tuple[np.ndarray | None, bool]:
    """Mono float32 audio at `sample_rate`, or None (with the problem recorded); also whether it was repaired."""
    if not path.is_file():
        problems.append(Problem(line, utt, "skipped",
                                f"audio file {path} does not exist; paths are relative to the manifest"))
        return None, False
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - soundfile raises several types for bad files
        problems.append(Problem(line, utt, "skipped", f"audio file {path} is unreadable ({exc}); give a WAV/FLAC file"))
        return None, False
    if audio.size == 0 or not np.any(audio):
        problems.append(Problem(line, utt, "skipped", f"audio file {path} is empty or silent"))
        return None, False
    repaired = False
    if audio.shape[1] > 1:
        problems.append(Problem(line, utt, "downmixed", f"{audio.shape[1]} channels averaged to mono"))
        repaired = True
    mono = audio.mean(axis=1)
    if rate != sample_rate:
        problems.append(Problem(line, utt, "resampled", f"{rate} Hz resampled to the codec's {sample_rate} Hz"))
        mono = resample(mono, rate, sample_rate)
        repaired = True
    return mono.astype(np.float32), repaired


def assign_splits(utterance_ids: list[str], heldout_fraction: float, seed: int,
                  sft_fraction: float = 0.0) -> dict[str, str]:
    """A seeded shuffle; the first ceil(fraction * n) are held out (at least one if any fraction is asked), then
    ceil(sft_fraction * the rest) go to the base model's SFT alone ("sft"), and the others are the prompts alignment
    rounds draw from ("train"). The held-out utterances are the same whatever sft_fraction is."""
    order = sorted(utterance_ids)
    random.Random(seed).shuffle(order)
    n_held = int(np.ceil(heldout_fraction * len(order))) if heldout_fraction > 0 else 0
    n_sft = int(np.ceil(sft_fraction * (len(order) - n_held)))
    return {u: "heldout" if i < n_held else "sft" if i < n_held + n_sft else "train" for i, u in enumerate(order)}


def import_corpus(store: PreferenceStore, codec, manifest: Path, min_seconds: float, max_seconds: float,
                  heldout_fraction: float, split_seed: int, repaired_dir: Path, batch_size: int = 16,
                  sft_fraction: float = 0.0, split: str | None = None) -> dict:
    """Import `manifest` into the store with golden tokens of every codebook of `codec` (a codec plug-in, or a
    SpeechTokenizer); return counts and problems. Recordings are read at the codec's sample rate (resampled and
    recorded as a repair when they are at another). With `split`, every new utterance goes to it (the "test" split of
    an ablation's final evaluation), not to the seeded ones."""
    codec = as_codec(codec)
    manifest = manifest.resolve()
    rows, problems = read_manifest(manifest, codec.sample_rate, min_seconds, max_seconds, repaired_dir)
    known = store.known_utterances()
    new = [r for r in rows if r.utterance_id not in known]
    splits = ({r.utterance_id: split for r in new} if split else
              assign_splits([r.utterance_id for r in new], heldout_fraction, split_seed, sft_fraction))
    with Progress(f"import: golden tokens of {len(new)} recordings", len(new), "recording") as progress:
        codes = codec.encode([r.audio for r in new], batch_size, on_batch=progress.advance)
    store.add_prompts([
        {"utterance_id": r.utterance_id, "text": r.text, "speaker": r.speaker, "golden_audio_path": str(r.audio_path),
         "golden_tokens": c.tolist(), "num_frames": int(c.shape[1]), "duration_s": len(r.audio) / codec.sample_rate,
         "split": splits[r.utterance_id]}
        for r, c in zip(new, codes)
    ])
    store.add_import_issues([p.as_row(manifest) for p in problems])
    for p in problems:
        log.warning("%s: %s", manifest.name, p)
    return {"rows_ok": len(rows), "imported": len(new), "already_known": len(rows) - len(new),
            "heldout": sum(1 for s in splits.values() if s == "heldout"),
            "sft": sum(1 for s in splits.values() if s == "sft"),
            "skipped": sum(1 for p in problems if p.action == "skipped"),
            "repaired": sorted({p.utterance_id for p in problems if p.action != "skipped"}),
            "problems": [str(p) for p in problems]}
