"""Speaker similarity: cosine similarity of resemblyzer speaker embeddings between a sample and its
prompt's golden recording (1 is the same voice), batched.

Each clip's embedding is resemblyzer's `VoiceEncoder.embed_utterance` of `preprocess_wav(clip)` (volume
normalised, long silences cut): the clip is cut into 1.6 s partial utterances (compute_partial_slices,
rate 1.3 per second, last one kept at 75% coverage, zero-padded), each partial's 40-band mel spectrogram
goes through the encoder's LSTM, and the clip's embedding is the L2-normalised mean of its partials'
embeddings. Here the partials of every clip of a batch go through the LSTM together (they all have 160
frames), which is where the time goes when clips are embedded one by one. Golden embeddings are kept per
recording path: the K candidates of a prompt share one golden recording.
"""

from __future__ import annotations

import numpy as np

from speechalign.models.metrics import ScoreItem

SAMPLE_RATE = 16000
RATE, MIN_COVERAGE = 1.3, 0.75  # embed_utterance's defaults
PARTIALS_PER_PASS = 256  # partial utterances per LSTM forward pass (about 4 s of audio each)
GOLDEN_CACHE = 4096  # golden embeddings kept per instance


class SpeakerSimilarity:
    name = "speaker_similarity"
    needs_audio = True
    outputs = {"speaker_similarity": True}

    def __init__(self, options=None, policy: str | None = None) -> None:
        from resemblyzer import VoiceEncoder  # noqa: PLC0415 - torch model, loaded where it runs

        self.encoder = VoiceEncoder("cpu", verbose=False).eval()
        self._golden: dict[str, np.ndarray] = {}

    def score(self, items: list[ScoreItem]) -> list[dict[str, float]]:
        from speechalign.models.metrics.asr import read_audio, sample_audio_path  # noqa: PLC0415

        paths = [sample_audio_path(i) for i in items]
        for item in items:
            if not item.golden_audio_path:
                raise ValueError(f"sample for {item.text!r} has no golden recording (golden_audio_path is None); "
                                 "speaker similarity compares the sample with it")
        golden = {i.golden_audio_path: self._golden.get(i.golden_audio_path) for i in items}
        new = [p for p, e in golden.items() if e is None]
        wavs = [read_audio(p, SAMPLE_RATE) for p in paths] + [read_audio(p, SAMPLE_RATE) for p in new]
        embeds = self.embed(wavs, names=paths + new)
        golden.update(zip(new, embeds[len(paths):]))
        if len(self._golden) + len(new) > GOLDEN_CACHE:
            self._golden.clear()
        self._golden.update(zip(new, embeds[len(paths):]))
        return [{self.name: float(np.dot(e, golden[i.golden_audio_path]))} for e, i in zip(embeds, items)]

    def embed(self, wavs: list[np.ndarray], names: list[str] | None = None) -> np.ndarray:
        """Unit-length speaker embeddings (clips, 256) of 16 kHz clips, as embed_utterance gives them."""
        import torch  # noqa: PLC0415
        from resemblyzer import audio, preprocess_wav  # noqa: PLC0415

        mels, owner = [], []
        for n, wav in enumerate(wavs):
            what = names[n] if names else f"clip {n}"
            wav = np.asarray(wav, dtype=np.float32).reshape(-1)
            if not np.any(wav):
                raise ValueError(f"{what} is silent ({len(wav)} samples); it has no speaker to compare")
            wav = preprocess_wav(wav)  # at 16 kHz already: no resampling
            if len(wav) == 0:
                raise ValueError(f"{what} has no voiced audio left after resemblyzer's silence trimming")
            wav_slices, mel_slices = self.encoder.compute_partial_slices(len(wav), RATE, MIN_COVERAGE)
            if wav_slices[-1].stop >= len(wav):
                wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)), "constant")
            mel = audio.wav_to_mel_spectrogram(wav)
            mels += [mel[s] for s in mel_slices]
            owner += [n] * len(mel_slices)
        partial = []
        with torch.inference_mode():
            for i in range(0, len(mels), PARTIALS_PER_PASS):
                partial.append(self.encoder(torch.from_numpy(np.stack(mels[i:i + PARTIALS_PER_PASS]))).numpy())
        partial = np.concatenate(partial)
        owner = np.asarray(owner)
        raw = np.stack([partial[owner == n].mean(axis=0) for n in range(len(wavs))])
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)
