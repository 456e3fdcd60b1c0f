"""`speechalign codec-report`: how good the codec's audio is, on a campaign's held-out utterances.

For each held-out recording: the codec's reconstruction from all RVQ layers of its golden tokens,
the acoustic stage's reconstruction from layer 1 alone (what decoding the codec LM's output
does), layer 1 decoded by itself, and white noise at the same loudness as a floor. Each gets
DNSMOS, speaker similarity to the recording and two spectral distances; decoding speed is
reported as a real-time factor (seconds of compute per second of audio).
"""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speechalign.config import Config
from speechalign.models.audio import resample
from speechalign.models.speechtokenizer import audio_quality as aq
from speechalign.models.speechtokenizer.acoustic import is_saved_acoustic, load_acoustic
from speechalign.models.speechtokenizer.codec import load_codec
from speechalign.models.speechtokenizer.synthesizer import Synthesizer
from speechalign.preference_store.store import open_store

CONDITIONS = ("codec, 8 layers", "layer 1 + acoustic stage", "layer 1 only", "white noise")


def read_16k(path: str) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return resample(audio.mean(axis=1), rate, aq.SAMPLE_RATE)


def reconstruction_figures(cfg: Config, limit: int = 40) -> dict:
    prompts = open_store(cfg.store_url).prompts("heldout")[:limit]
    if not prompts:
        raise RuntimeError("the store has no held-out prompts; run `speechalign bootstrap` first")
    if cfg.codec.kind != "speechtokenizer":
        raise RuntimeError(f"codec-report measures a SpeechTokenizer and its acoustic stage; codec.kind is "
                           f"{cfg.codec.kind!r}")
    codec = load_codec(*cfg.codec.files())
    full = Synthesizer(codec, None)
    staged = Synthesizer(codec, load_acoustic(cfg.layout.acoustic)) if is_saved_acoustic(cfg.layout.acoustic) else None
    refs = [read_16k(p.golden_audio_path) for p in prompts]
    seconds = sum(len(r) for r in refs) / aq.SAMPLE_RATE
    outputs, timing = {}, {}
    started = time.monotonic()
    outputs[CONDITIONS[0]] = full.decode_codes([np.asarray(p.golden_tokens) for p in prompts])
    timing["decode_rtf"] = (time.monotonic() - started) / seconds
    if staged is not None:
        started = time.monotonic()
        outputs[CONDITIONS[1]] = staged.synthesize([p.golden_tokens[0] for p in prompts], [p.speaker for p in prompts])
        timing["acoustic_and_decode_rtf"] = (time.monotonic() - started) / seconds
    outputs[CONDITIONS[2]] = full.decode_codes([np.asarray(p.golden_tokens[:1]) for p in prompts])
    outputs[CONDITIONS[3]] = [aq.white_noise_like(r, i) for i, r in enumerate(refs)]
    rows = {"original": {"dnsmos_ovrl": float(np.mean([aq.dnsmos(r)["ovrl"] for r in refs]))}}
    for name, wavs in outputs.items():
        mos = [aq.dnsmos(w) for w in wavs]
        rows[name] = {
            "dnsmos_ovrl": float(np.mean([m["ovrl"] for m in mos])),
            "dnsmos_sig": float(np.mean([m["sig"] for m in mos])),
            "dnsmos_bak": float(np.mean([m["bak"] for m in mos])),
            "speaker_similarity": float(np.mean([aq.speaker_similarity(r, w) for r, w in zip(refs, wavs)])),
            "log_mel_l1": float(np.mean([aq.log_mel_l1(r, w) for r, w in zip(refs, wavs)])),
            "mcd_db": float(np.mean([aq.mel_cepstral_distortion(r, w) for r, w in zip(refs, wavs)])),
        }
    return {"utterances": len(prompts), "audio_seconds": round(seconds, 1), "rows": rows, **timing,
            "hardware": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU"}


def format_figures(f: dict) -> str:
    lines = [f"Held-out demo utterances: {f['utterances']} ({f['audio_seconds']} s), each against its recording.", "",
             "| audio | DNSMOS OVRL | SIG | BAK | speaker sim | log-mel L1 | MCD (dB) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in f["rows"].items():
        cells = [f"{r[k]:.2f}" if k in r else "-" for k in ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak")]
        cells += [f"{r[k]:.3f}" if k in r else "-" for k in ("speaker_similarity", "log_mel_l1")]
        cells += [f"{r['mcd_db']:.2f}" if "mcd_db" in r else "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Decoding speed on this CPU ({f['hardware']}): real-time factor {f['decode_rtf']:.4f} "
              f"for the codec decoder" + (f", {f['acoustic_and_decode_rtf']:.4f} with the acoustic stage"
                                          if "acoustic_and_decode_rtf" in f else "") + "."]
    return "\n".join(lines)


SECTION = "## Reconstruction figures"


def update_card(card: Path, text: str, command: str) -> None:
    """Replace (or add) the card's reconstruction section with `text`."""
    body = card.read_text()
    section = f"{SECTION}\n\n{text}\n\nCommand: `{command}`\n"
    pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.S)
    body = pattern.sub(lambda _: section, body) if SECTION in body else body.rstrip() + "\n\n" + section
    card.write_text(body)
