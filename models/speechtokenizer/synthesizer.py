"""From codec LM units to audio: the acoustic stage predicts the latent all RVQ layers would sum to, the codec's
decoder makes the waveform.

`acoustic = "model"` uses the acoustic stage bootstrap trained (SoundStorm's role in SpeechAlign);
`acoustic = "layer1_only"` decodes layer 1 by itself (the other layers left out of the RVQ sum),
which keeps the content but loses the voice's detail (see the codec's model card for both figures).
"""

from __future__ import annotations

import numpy as np
import torch
from speechtokenizer import SpeechTokenizer

from speechalign.models.speechtokenizer.acoustic import AcousticStage


class Synthesizer:
    def __init__(self, codec: SpeechTokenizer, acoustic: AcousticStage | None):
        self.codec, self.acoustic = codec, acoustic
        self.hop, self.sample_rate = int(codec.downsample_rate), int(codec.sample_rate)

    def latents(self, units: list[list[int]], speakers: list[str | None]) -> list[np.ndarray]:
        """The decoder's input (dimension, frames) per unit sequence: the acoustic stage's, else layer 1's codes."""
        bins = int(self.codec.quantizer.bins)
        for u in units:
            bad = [x for x in u if not 0 <= x < bins]
            if bad:
                raise ValueError(f"unit {bad[0]} is outside the codec's codebook (0..{bins - 1}): the policy's "
                                 "speech vocabulary does not match the codec; bootstrap the model with this codec")
        if self.acoustic is None:
            return self.code_latents([np.asarray(u, dtype=np.int64)[None, :] for u in units])
        return self.acoustic.predict(units, speakers)

    @torch.inference_mode()
    def code_latents(self, codes: list[np.ndarray]) -> list[np.ndarray]:
        """The RVQ's quantized latent (dimension, frames) of codes (layers, frames): the sum of the given layers'
        codebook vectors (layers from 1)."""
        return [self.codec.quantizer.decode(torch.as_tensor(np.asarray(c), dtype=torch.long)[:, None])[0].numpy()
                for c in codes]

    @torch.inference_mode()
    def decode(self, latents: list[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
        """Waveforms (float32) for latents of shape (dimension, frames), decoded in batches of similar length.

        The decoder is convolutional with a forward LSTM: zero padding after a sequence reaches back only
        through the convolutions' look-ahead, a few frames at its end (the tests bound it at 10); the
        output is trimmed to frames * hop."""
        out: list[np.ndarray | None] = [None] * len(latents)
        order = sorted(range(len(latents)), key=lambda i: latents[i].shape[1])
        for start in range(0, len(order), batch_size):
            idx = [i for i in order[start:start + batch_size] if latents[i].shape[1] > 0]
            for i in order[start:start + batch_size]:
                if latents[i].shape[1] == 0:
                    out[i] = np.zeros(0, dtype=np.float32)  # the LM ended at once: an empty clip, scored as such
            if not idx:
                continue
            longest = max(latents[i].shape[1] for i in idx)
            batch = torch.zeros(len(idx), latents[idx[0]].shape[0], longest)
            for row, i in enumerate(idx):
                batch[row, :, : latents[i].shape[1]] = torch.from_numpy(latents[i])
            wav = self.codec.decoder(batch)[:, 0]
            for row, i in enumerate(idx):
                out[i] = wav[row, : latents[i].shape[1] * self.hop].numpy().astype(np.float32)
        return out  # type: ignore[return-value]

    def decode_codes(self, codes: list[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
        """Waveforms for RVQ codes (layers, frames): all layers of a recording, or layer 1 alone."""
        return self.decode(self.code_latents(codes), batch_size)

    def synthesize(self, units: list[list[int]], speakers: list[str | None], batch_size: int = 16) -> list[np.ndarray]:
        return self.decode(self.latents(units, speakers), batch_size)

    def synthesize_each(self, units: list[list[int]], speakers: list[str | None],
                        batch_size: int = 16) -> list[np.ndarray | Exception]:
        """Like `synthesize`, but a sequence that cannot be decoded costs only itself: if the batch fails,
        each sequence is decoded alone and a failing one gets its exception in place of audio."""
        try:
            return list(self.synthesize(units, speakers, batch_size))
        except Exception:  # noqa: BLE001 - find which sequence it was
            out: list[np.ndarray | Exception] = []
            for u, s in zip(units, speakers):
                try:
                    out.append(self.synthesize([u], [s])[0])
                except Exception as exc:  # noqa: BLE001
                    out.append(exc)
            return out
