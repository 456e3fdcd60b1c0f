"""The demo corpus: varied English sentences spoken by espeak-ng in several voices.

It writes a manifest in the same JSONL format a user gives `speechalign bootstrap`, so the demo
exercises the user's import path instead of a side door.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from speechalign.models.audio import resample
from speechalign.runtime.progress import Progress

SUBJECTS = [
    "the old farmer", "my sister", "a young pilot", "the tired doctor", "our neighbour",
    "the quiet child", "a small dog", "the teacher", "his brother", "the captain",
    "a clever student", "the baker", "her friend", "the singer", "a tall man",
    "the nurse", "my uncle", "the driver", "a kind woman", "the painter",
]
VERBS = [
    "found", "painted", "carried", "opened", "cleaned", "sold", "bought", "dropped",
    "fixed", "watched", "moved", "lost", "built", "closed", "washed", "borrowed",
]
ADJECTIVES = [
    "red", "heavy", "broken", "shiny", "wooden", "tiny", "green", "strange",
    "warm", "empty", "golden", "narrow", "soft", "bright", "dusty", "round",
]
OBJECTS = [
    "box", "window", "basket", "lamp", "bicycle", "letter", "chair", "kettle",
    "ladder", "jacket", "map", "bottle", "clock", "blanket", "drum", "boat",
]
PLACES = [
    "near the river", "in the kitchen", "behind the school", "at the station",
    "under the bridge", "in the garden", "on the hill", "by the market",
    "inside the barn", "at the harbour", "across the street", "in the library",
]
TIMES = [
    "this morning", "last night", "before lunch", "after the storm", "on monday",
    "at noon", "in the spring", "yesterday", "every evening", "early today",
]
QUESTIONS = [
    "where did you put the {adj} {obj}", "why is the {obj} so {adj}",
    "can you see the {adj} {obj} {place}", "who {verb} the {obj} {time}",
    "did {subj} really lose the {obj}",
]
STATEMENTS = [
    "{subj} {verb} the {adj} {obj} {place}", "{subj} {verb} a {obj} {time}",
    "{time} {subj} {verb} the {obj}", "the {obj} {place} looks very {adj}",
    "{subj} said the {obj} was {adj}", "please bring the {adj} {obj} {place}",
    "{subj} {verb} two {adj} {obj}s {time}", "nobody {verb} the {obj} {place}",
]


def demo_sentences(count: int, seed: int) -> list[str]:
    """`count` distinct sentences from a small grammar, the same for the same seed."""
    rng = random.Random(seed)
    sentences: list[str] = []
    seen: set[str] = set()
    while len(sentences) < count:
        template = rng.choice(QUESTIONS if rng.random() < 0.25 else STATEMENTS)
        text = template.format(
            subj=rng.choice(SUBJECTS), verb=rng.choice(VERBS), adj=rng.choice(ADJECTIVES),
            obj=rng.choice(OBJECTS), place=rng.choice(PLACES), time=rng.choice(TIMES),
        )
        text = text[0].upper() + text[1:] + ("?" if template in QUESTIONS else ".")
        if text not in seen:
            seen.add(text)
            sentences.append(text)
    return sentences


def espeak_binary() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError(
            "espeak-ng is not installed; it speaks the demo corpus. "
            "Install it with `apt-get install -y espeak-ng` (the README's commands do this)."
        )
    return path


def speak(text: str, voice: str, speed: int, sample_rate: int) -> np.ndarray:
    """Speak `text` with espeak-ng and return mono float32 audio at `sample_rate`."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(
            [espeak_binary(), "-v", voice, "-s", str(speed), "-w", tmp.name, text],
            check=True, capture_output=True,
        )
        audio, rate = sf.read(tmp.name, dtype="float32")
    return resample(audio, rate, sample_rate)


def build_demo_corpus(out_dir: Path, n_utterances: int, voices: list[str], seed: int, speed: int,
                      sample_rate: int = 16000, after: int = 0, prefix: str = "demo") -> Path:
    """Write `n_utterances` WAVs and `manifest.jsonl` under `out_dir`; return the manifest path. With `after`, the
    sentences the grammar gives after the first `after` (the demo corpus's): new sentences, for a test split.

    Voices rotate so each sentence has one speaker and every voice covers a share of the corpus.
    One speed for all: a voice then says a word the same way wherever it occurs, which a small
    model can learn from a few hundred sentences. An existing complete manifest is reused.
    """
    manifest = out_dir / "manifest.jsonl"
    if manifest.exists() and sum(1 for _ in manifest.open()) == n_utterances:
        return manifest
    (out_dir / "wavs").mkdir(parents=True, exist_ok=True)
    sentences = demo_sentences(after + n_utterances, seed)[after:]

    def write(i: int) -> dict:
        voice = voices[i % len(voices)]
        name = f"wavs/{prefix}-{i:04d}.wav"
        sf.write(out_dir / name, speak(sentences[i], voice, speed, sample_rate), sample_rate, subtype="PCM_16")
        return {"id": f"{prefix}-{i:04d}", "text": sentences[i], "audio": name, "speaker": voice}

    rows = []
    with Progress(f"demo corpus: espeak-ng speaks {len(sentences)} sentences", len(sentences), "utt") as progress, \
            ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # each is an espeak-ng process
        for row in pool.map(write, range(len(sentences))):
            rows.append(row)
            progress.advance()
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(manifest)
    return manifest
