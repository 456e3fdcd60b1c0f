"""Scoring throughput of the audio metrics: the batched `dnsmos` + `speaker_similarity` plug-ins scoring a
batch of samples, against scoring each utterance on its own with the packages' own calls
(speechmos.dnsmos.run, resemblyzer's embed_utterance of the sample and of its golden recording, and a
cosine), measured in the same run on the same files.

    .venv/bin/python benchmarks/scoring.py [--sentences 16] [--candidates 4] [--lengths codec] [--require 3]

The clips are real speech made on the spot with espeak-ng: each sentence has a golden recording (22.05 kHz,
one voice) and K candidates (16 kHz, the same sentence in other voices and speeds), so candidates share
their golden recording as a round's samples do. With --lengths codec (the default) each candidate is cut to
a whole number of codec frames (320 samples), which is what the decode stage writes; --lengths raw keeps
espeak's lengths. Both paths are warmed up first on other clips (speechmos's first call loads its models,
librosa's first calls compile). Prints utterances per second of each path and the speed-up; with
--require X it exits 1 when the speed-up is below X.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speechalign.bootstrap.demo_corpus import demo_sentences, speak
from speechalign.models.audio import resample
from speechalign.models.metrics import ScoreItem
from speechalign.models.metrics.dnsmos import Dnsmos, repeat_pad, window_starts
from speechalign.models.metrics.speaker import SpeakerSimilarity

GOLDEN_VOICE, GOLDEN_RATE = "en-us+m3", 22050
CANDIDATES = [("en-us+m3", 165), ("en-us+m3", 190), ("en-us+m1", 175), ("en-gb+m3", 180),
              ("en-us+f3", 175), ("en-us+m2", 200)]
CODEC_HOP = 320


def make_clips(root: Path, sentences: list[str], k: int, lengths: str) -> list[ScoreItem]:
    items = []
    for n, text in enumerate(sentences):
        golden = root / f"golden-{n:02d}.wav"
        sf.write(golden, speak(text, GOLDEN_VOICE, 175, GOLDEN_RATE), GOLDEN_RATE, subtype="PCM_16")
        for j, (voice, speed) in enumerate(CANDIDATES[:k]):
            wav = speak(text, voice, speed, 16000)
            if lengths == "codec":
                wav = wav[:len(wav) // CODEC_HOP * CODEC_HOP]
            path = root / f"sample-{n:02d}-{j}.wav"
            sf.write(path, wav, 16000, subtype="PCM_16")
            items.append(ScoreItem(tokens=[], golden_tokens=[], text=text, audio_path=str(path),
                                   golden_audio_path=str(golden)))
    return items


def read_16k(path: str) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return resample(audio.mean(axis=1), rate, 16000)


class PerUtterance:
    """Each utterance scored on its own with the packages' own per-clip calls."""

    def __init__(self) -> None:
        from resemblyzer import VoiceEncoder  # noqa: PLC0415

        self.encoder = VoiceEncoder("cpu", verbose=False)
        self.seconds = {"dnsmos": 0.0, "speaker": 0.0}

    def score(self, items: list[ScoreItem]) -> list[dict[str, float]]:
        from resemblyzer import preprocess_wav  # noqa: PLC0415
        from speechmos import dnsmos  # noqa: PLC0415

        out = []
        for item in items:
            t0 = time.perf_counter()
            wav = read_16k(item.audio_path)
            mos = dnsmos.run(wav, 16000)
            t1 = time.perf_counter()
            sample = self.encoder.embed_utterance(preprocess_wav(wav, source_sr=16000))
            golden = self.encoder.embed_utterance(preprocess_wav(read_16k(item.golden_audio_path), source_sr=16000))
            out.append({"dnsmos_sig": float(mos["sig_mos"]), "dnsmos_bak": float(mos["bak_mos"]),
                        "dnsmos_ovrl": float(mos["ovrl_mos"]), "speaker_similarity": float(np.dot(sample, golden))})
            self.seconds["dnsmos"] += t1 - t0
            self.seconds["speaker"] += time.perf_counter() - t1
        return out


class Batched:
    """The plug-ins, as the score stage runs them: each scores the whole batch at once."""

    def __init__(self) -> None:
        self.dnsmos, self.speaker = Dnsmos(), SpeakerSimilarity()
        self.seconds = {"dnsmos": 0.0, "speaker": 0.0}

    def score(self, items: list[ScoreItem]) -> list[dict[str, float]]:
        self.speaker._golden.clear()  # every measured batch embeds its golden recordings anew
        t0 = time.perf_counter()
        mos = self.dnsmos.score(items)
        t1 = time.perf_counter()
        spk = self.speaker.score(items)
        self.seconds["dnsmos"] += t1 - t0
        self.seconds["speaker"] += time.perf_counter() - t1
        return [{**a, **b} for a, b in zip(mos, spk)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=16)
    ap.add_argument("--candidates", type=int, default=4, help=f"candidates per sentence (at most {len(CANDIDATES)})")
    ap.add_argument("--lengths", choices=("codec", "raw"), default="codec")
    ap.add_argument("--require", type=float, default=None, help="exit 1 if the speed-up is below this")
    args = ap.parse_args()
    if not 1 <= args.candidates <= len(CANDIDATES):
        ap.error(f"--candidates must be 1..{len(CANDIDATES)}")

    with tempfile.TemporaryDirectory(prefix="speechalign-scoring-") as tmp:
        root = Path(tmp)
        (root / "warm").mkdir()
        sentences = demo_sentences(args.sentences + 2, seed=23)
        warm = make_clips(root / "warm", sentences[-2:], 2, args.lengths)
        items = make_clips(root, sentences[:args.sentences], args.candidates, args.lengths)
        seconds = [len(read_16k(i.audio_path)) / 16000 for i in items]
        windows = [len(window_starts(len(repeat_pad(np.zeros(int(s * 16000), np.float32))))) for s in seconds]
        print(f"{len(items)} samples ({args.sentences} sentences x {args.candidates} candidates, "
              f"{args.lengths} lengths), "
              f"{min(seconds):.2f}-{max(seconds):.2f} s each (mean {np.mean(seconds):.2f} s), "
              f"{sum(windows)} DNSMOS windows; {len({i.golden_audio_path for i in items})} golden recordings at "
              f"{GOLDEN_RATE} Hz; torch threads {torch.get_num_threads()}")

        baseline, batched = PerUtterance(), Batched()
        baseline.score(warm)
        batched.score(warm)
        baseline.seconds = {k: 0.0 for k in baseline.seconds}
        batched.seconds = {k: 0.0 for k in batched.seconds}

        rows = {}
        for name, path in (("per utterance (speechmos.run + embed_utterance x2)", baseline),
                           ("batched plug-ins (Dnsmos + SpeakerSimilarity)", batched)):
            t0 = time.perf_counter()
            values = path.score(items)
            rows[name] = (time.perf_counter() - t0, values, dict(path.seconds))

    print(f"\n{'path':52s} {'utts':>5s} {'seconds':>8s} {'utt/s':>7s} {'dnsmos s':>9s} {'speaker s':>9s}")
    for name, (wall, _, parts) in rows.items():
        print(f"{name:52s} {len(items):5d} {wall:8.2f} {len(items) / wall:7.2f} "
              f"{parts['dnsmos']:9.2f} {parts['speaker']:9.2f}")
    (base_wall, base, base_parts), (ours_wall, ours, ours_parts) = rows.values()
    for key in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "speaker_similarity"):
        diff = max(abs(a[key] - b[key]) for a, b in zip(base, ours))
        print(f"max |difference| in {key}: {diff:.2e}")
    ratio = base_wall / ours_wall
    print(f"speed-up of the batched plug-ins: {ratio:.1f}x (dnsmos {base_parts['dnsmos'] / ours_parts['dnsmos']:.1f}x, "
          f"speaker similarity {base_parts['speaker'] / ours_parts['speaker']:.1f}x)")
    if args.require is not None and ratio < args.require:
        print(f"FAIL: speed-up {ratio:.1f}x is below the required {args.require}x")
        sys.exit(1)


if __name__ == "__main__":
    main()
