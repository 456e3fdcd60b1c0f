"""The ceiling: what the held-out figures would be if the policy spoke exactly like the corpus.

Two rows, scored with the held-out metric plug-ins (score.metrics + score.heldout_metrics):
    recording       each held-out recording as the codec hears it: at the codec's (input) sample rate, its last
                    frame zero-padded to a whole one (less than one hop of silence, 20 ms for the demo codec; its
                    golden tokens cover it). Every sample is whole frames long too, and DNSMOS scores whole-frame
                    clips in a third of the time (models/metrics/dnsmos.py). Unit edit distance 0 by definition.
    golden_tokens   its golden tokens through the same decoding path as every sample (SpeechTokenizer: acoustic
                    stage + codec decoder; a transformers codec: its decoder, at its output rate): the best a
                    policy whose units were the golden ones could sound

Neither depends on a campaign or its model, only on the corpus, the codec, the acoustic stage and the
scoring setup. So they are scored once per work directory and setup, and kept in the store's
`ceiling_scores` keyed by a fingerprint of that setup (`scoring_fingerprint`): bootstrap scores them
with the work directory's config, and a campaign's round 0 reads them, scoring them only if its own
setup differs. Plug-ins that score with a policy (policy_loglik) are left out: their value belongs to
a model. A resumed or repeated call scores only what is missing; one item that fails records its error
and the rest go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from speechalign.config import Config
from speechalign.models.codecs import codec_flattening, decoding_path, golden_units, uses_acoustic_stage
from speechalign.models.metrics import ScoreItem, get_metric, uses_policy, value_directions
from speechalign.models.metrics.asr import read_audio
from speechalign.preference_store.schema import Prompt
from speechalign.preference_store.store import PreferenceStore
from speechalign.runtime.progress import Progress
from speechalign.tasks.decode import WavJob, synthesizer, write_wav, write_wavs
from speechalign.tasks.score import heldout_metrics, score_items, value_means, value_rows

log = logging.getLogger(__name__)
ROWS = ("recording", "golden_tokens")


def ceiling_metrics(cfg: Config) -> list[str]:
    return [m for m in heldout_metrics(cfg) if not uses_policy(m)]


def scoring_fingerprint(cfg: Config) -> str:
    """sha256 of what the ceiling's values are made from besides the corpus: the plug-ins and their options,
    and the decoding path (codec and acoustic stage files, decoding batch size)."""
    options = cfg.score.model_dump(exclude={"metrics", "heldout_metrics", "candidates", "batch_size"})
    setup = {"metrics": ceiling_metrics(cfg), "score": options, "recording": "frames",
             "acoustic": cfg.codec.acoustic, "decode_batch": cfg.codec.decode_batch_size}
    if cfg.codec.kind != "speechtokenizer":  # (a SpeechTokenizer setup's fingerprint is what it always was)
        setup |= {"codec": cfg.codec.kind, "codebooks": cfg.codec.codebooks}
    digest = hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode())
    files = list(cfg.codec.files())
    if uses_acoustic_stage(cfg.codec):
        files += sorted(p for p in Path(cfg.layout.acoustic).glob("*") if p.is_file())
    for path in files:
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()


def measure_ceiling(cfg: Config, store: PreferenceStore) -> dict[str, dict[str, float]]:
    """{row: {value: mean over held-out prompts}}, scoring now only what the store does not hold yet."""
    prompts = store.prompts("heldout")
    scoring = scoring_fingerprint(cfg)
    audio = {"recording": recording_wavs(cfg, prompts), "golden_tokens": golden_wavs(cfg, prompts)}
    flattening = codec_flattening(cfg.codec)
    for name in ceiling_metrics(cfg):
        outputs = value_directions([name]).keys()
        have = store.ceiling_scores(scoring)
        todo = [(row, p) for row in ROWS for p in prompts
                if p.id in audio[row] and not outputs <= have.get((row, p.id), {}).keys()]
        if not todo:
            continue
        metric = get_metric(name, cfg.score)
        size = max(1, cfg.score.batch_size)
        with Progress(f"ceiling: {name} on {len(todo)} recordings and golden tokens", len(todo), "clip") as progress:
            for start in range(0, len(todo), size):
                batch = todo[start:start + size]
                results = score_items(metric, [item(p, audio[row][p.id], flattening) for row, p in batch],
                                      [f"{row} of {p.utterance_id}" for row, p in batch])
                store.add_ceiling_scores([{"prompt_id": p.id, "kind": row, "scoring": scoring, **value}
                                          for (row, p), result in zip(batch, results, strict=True)
                                          for value in value_rows(metric, result)])
                progress.advance(len(batch))
    found = store.ceiling_scores(scoring)
    return {row: value_means(found.get((row, p.id), {}) for p in prompts) for row in ROWS}


def item(prompt: Prompt, audio_path: str, flattening) -> ScoreItem:
    units = golden_units(prompt.golden_tokens, flattening)
    return ScoreItem(tokens=units, golden_tokens=units, text=prompt.text,
                     audio_path=audio_path, golden_audio_path=prompt.golden_audio_path, speaker=prompt.speaker)


def recording_wavs(cfg: Config, prompts: list[Prompt]) -> dict[int, str]:
    """The held-out recordings at the codec's (input) rate, zero-padded to whole codec frames of its hop, under the
    corpus's
    ceiling/recording/ folder, named p<prompt id>_<recording's name> (written once). A recording that cannot
    be read keeps its own path: each plug-in then records the error, naming it."""
    folder = cfg.layout.corpus / "ceiling" / "recording"
    path = {p.id: folder / f"p{p.id}_{Path(p.golden_audio_path).stem}.wav" for p in prompts}
    todo = [p for p in prompts if not path[p.id].is_file()]
    unread = {}
    if todo:
        synth = synthesizer(cfg)
        for p in todo:
            try:
                wav = read_audio(p.golden_audio_path, synth.sample_rate)  # what the codec encodes
            except (OSError, RuntimeError, ValueError) as error:  # soundfile's LibsndfileError is a RuntimeError
                log.warning("ceiling: recording of %s not read: %s", p.utterance_id, error)
                unread[p.id] = p.golden_audio_path
                continue
            write_wav(path[p.id], np.pad(wav, (0, -len(wav) % synth.hop)), synth.sample_rate)
    return {i: unread.get(i, str(f)) for i, f in path.items()}


def golden_wavs(cfg: Config, prompts: list[Prompt]) -> dict[int, str]:
    """The held-out golden tokens decoded, under the corpus's ceiling/ folder (decoded once; a prompt that fails
    to decode is logged and left out). The round's MLflow run plays them beside its samples."""
    folder = cfg.layout.corpus / "ceiling" / decoding_path(cfg.codec)
    path = {p.id: folder / f"p{p.id}_golden_tokens.wav" for p in prompts}
    todo = sorted((p for p in prompts if not path[p.id].is_file()), key=lambda p: (len(p.golden_tokens[0]), p.id))
    if todo:
        flattening = codec_flattening(cfg.codec)
        jobs = [WavJob(golden_units(p.golden_tokens, flattening), p.speaker, path[p.id],
                       f"golden tokens of {p.utterance_id}") for p in todo]
        with Progress(f"ceiling: decode {len(todo)} golden token sequences", len(todo), "sample") as progress:
            write_wavs(synthesizer(cfg), jobs, cfg.codec.decode_batch_size, progress=progress)
    return {i: str(f) for i, f in path.items() if f.is_file()}
