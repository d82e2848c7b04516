"""Whisper transcription from a local checkpoint, with timestamped segments.

Whisper's `load_model("tiny")` downloads; this module only ever loads the local `.pt`
that `transcription.checkpoint` names (under models/external/whisper/, a dvc.yaml dep of
ingest_video), never a cache dvc.yaml does not see, and only once its sha256 matches
`transcription.checkpoint_sha256`. With none, transcription is skipped and the reason recorded.
`transcribe` gets a float32 16 kHz array, which needs no ffmpeg binary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spark_trainer.errors import ModelSourceError
from spark_trainer.outputs import check_pinned_sha256


@dataclass(frozen=True)
class Resolved:
    checkpoint: Path | None
    reason: str  # why transcription is skipped ("" when a checkpoint was found)


def resolve_checkpoint(backend: str, checkpoint: str, checkpoint_sha256: str = "") -> Resolved:
    if backend == "none":
        return Resolved(None, "transcription.backend is none")
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if path.is_file():
            check_pinned_sha256(path, checkpoint_sha256, "ingest_video.transcription.checkpoint_sha256")
            return Resolved(path, "")
        # Configured but absent: an error, not a skip that looks like a choice.
        raise ModelSourceError(f"ingest_video.transcription.checkpoint: no Whisper checkpoint at '{checkpoint}'; "
                               "put the .pt file there, or set it to \"\" to skip transcription")
    return Resolved(None, "no Whisper checkpoint configured: set transcription.checkpoint to a Whisper .pt file "
                          "under models/external/whisper/")


class Transcriber:
    def __init__(self, checkpoint: Path, language: str, device="cpu") -> None:
        import whisper

        self.model = whisper.load_model(str(checkpoint), device=str(device))
        self.language = language or None

    def transcribe(self, audio: np.ndarray) -> list[dict]:
        """Segments `{id, start_s, end_s, text}` (greedy decoding: the same audio gives
        the same text). fp32 on any device: fp16 on a GPU could change the text."""
        if audio.size == 0:
            return []
        result = self.model.transcribe(audio.astype(np.float32), language=self.language, fp16=False,
                                       temperature=0.0, condition_on_previous_text=False, verbose=None)
        return [{"id": i, "start_s": round(float(s["start"]), 3), "end_s": round(float(s["end"]), 3),
                 "text": s["text"].strip()} for i, s in enumerate(result["segments"])]
