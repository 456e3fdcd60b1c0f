"""ASR throughput: the `asr` plug-in's batched Whisper (CTranslate2, a batch of clips per encoder and decoder
call, in a 10 s window when they are short) against faster-whisper's own `WhisperModel.transcribe`, one
utterance at a time, on the same shipped Whisper tiny.en and the same espeak clips, in the same run.

    .venv/bin/python benchmarks/asr.py [--utterances 64] [--batch 16] [--require 2]

Both paths are warmed up first. Prints utterances per second of each, the speed-up, and each path's mean
WER against the sentences (Whisper's English normalisation), so a speed-up that costs accuracy shows. With
--require X it exits 1 when the speed-up is below X.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from faster_whisper import WhisperModel

from speechalign.bootstrap.demo_corpus import demo_sentences, speak
from speechalign.models.metrics.asr import CTranslate2Whisper, error_rates, shipped_whisper

VOICES = ["en-us+m3", "en-gb+f3"]


def timed(transcribe, wavs) -> tuple[float, list[str]]:
    started = time.perf_counter()
    texts = transcribe(wavs)
    return time.perf_counter() - started, texts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--require", type=float, default=0.0)
    args = ap.parse_args()
    sentences = demo_sentences(args.utterances + 4, seed=99)
    wavs = [speak(text, VOICES[i % len(VOICES)], 175, 16000) for i, text in enumerate(sentences)]
    warm, wavs, sentences = wavs[:4], wavs[4:], sentences[4:]
    seconds = sum(len(w) for w in wavs) / 16000
    print(f"{len(wavs)} espeak utterances, {seconds:.0f} s of speech; Whisper tiny.en (CTranslate2, int8) from "
          f"{shipped_whisper()}")

    batched = CTranslate2Whisper(shipped_whisper(), batch_size=args.batch)
    library = WhisperModel(shipped_whisper(), device="cpu", compute_type="int8", cpu_threads=torch.get_num_threads(),
                           local_files_only=True)  # the same threads as the plug-in's

    def one_at_a_time(clips):
        return [" ".join(s.text for s in library.transcribe(w, language="en", beam_size=1)[0]).strip() for w in clips]

    batched.transcribe(warm)
    one_at_a_time(warm)
    rows = {}
    for name, transcribe in (("one at a time (faster-whisper transcribe)", one_at_a_time),
                             (f"batched plug-in (batches of {args.batch})", batched.transcribe)):
        spent, texts = timed(transcribe, wavs)
        wer = statistics.fmean(error_rates(h, r)[1] for h, r in zip(texts, sentences))
        rows[name] = len(wavs) / spent
        print(f"{name:44s} {len(wavs) / spent:6.2f} utt/s ({spent:6.1f} s)  WER {wer:.3f}")
    ratio = rows[list(rows)[1]] / rows[list(rows)[0]]
    print(f"speed-up of the batched plug-in: {ratio:.2f}x")
    return 1 if args.require and ratio < args.require else 0


if __name__ == "__main__":
    sys.exit(main())
