"""Audio tracks and files to 16 kHz mono float32, the input Whisper expects."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spark_trainer.video import containers

WHISPER_RATE = 16000


def load_mono_16k(path: Path) -> np.ndarray:
    """Decode the first audio stream (opened as its extension's container) and resample it with
    PyAV's resampler (libswresample)."""
    import av

    chunks = []
    with containers.open_container(path) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=WHISPER_RATE)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)
