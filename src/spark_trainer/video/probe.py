"""What a media file holds, read through PyAV (FFmpeg's libraries, no binary needed)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from spark_trainer.video import containers


@dataclass(frozen=True)
class MediaInfo:
    container: str
    duration_s: float | None     # what the container declares
    has_video: bool
    has_audio: bool
    video_codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    video_frames_declared: int | None = None
    audio_codec: str | None = None
    sample_rate: int | None = None
    channels: int | None = None

    def as_metadata(self) -> dict:
        return asdict(self)


class ProbeError(Exception):
    """The file could not be opened as media; `reason` is the quarantine reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def fingerprint(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256) of the file, read without following a symlink."""
    digest = hashlib.sha256()
    size = 0
    with containers.open_file(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return size, "sha256:" + digest.hexdigest()


def probe(path: Path) -> MediaInfo:
    """Streams, codecs, duration, resolution and frame rate, read from the container and
    stream headers (no frame is converted); raises ProbeError with `empty_file`,
    `unsupported_container` (an extension with no allowed format) or `unreadable_container`
    (the bytes are not the container the extension names)."""
    import av

    if path.stat().st_size == 0:
        raise ProbeError("empty_file", "the file has zero bytes")
    try:
        with containers.open_container(path) as container:
            return _media_info(container)
    except containers.UnsupportedContainer as e:
        raise ProbeError("unsupported_container", str(e)) from e
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        why = getattr(e, "strerror", None) or type(e).__name__  # strerror leaves out the path
        raise ProbeError("unreadable_container", f"PyAV could not open it as {containers.av_format(path)} "
                                                 f"(the container its extension names): {why}") from e


def _media_info(container) -> MediaInfo:
    v = container.streams.video[0] if container.streams.video else None
    a = container.streams.audio[0] if container.streams.audio else None
    duration = container.duration / 1_000_000 if container.duration else None
    fps = float(v.average_rate) if v is not None and v.average_rate else None
    return MediaInfo(
        container=container.format.name,
        duration_s=round(duration, 6) if duration is not None else None,
        has_video=v is not None,
        has_audio=a is not None,
        video_codec=v.codec_context.name if v is not None else None,
        width=v.codec_context.width if v is not None else None,
        height=v.codec_context.height if v is not None else None,
        fps=round(fps, 6) if fps is not None else None,
        video_frames_declared=int(v.frames) if v is not None and v.frames else None,
        audio_codec=a.codec_context.name if a is not None else None,
        sample_rate=a.codec_context.sample_rate if a is not None else None,
        channels=a.codec_context.channels if a is not None else None,
    )
