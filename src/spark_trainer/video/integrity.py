"""Integrity checks on a probed video: each failure is a quarantine reason, never a crash.

Reasons, in the order they are checked: `empty_file`, `unsupported_container` (an
extension with no allowed container format), `unreadable_container` (corrupt bytes, not
media at all, or another container than the extension names), `no_video_stream`,
`too_many_pixels` (the stream header's width x height is over the cap), `duration_out_of_bounds`,
`no_audio` (when audio is required), then after decoding `decode_error` (no frame decodes)
and `truncated` (decoding stops well before the duration the container declares).

Before any of these, the folder listing quarantines a `symlink` (never followed), a
`not_regular_file` (FIFO, socket, device) and an `undecodable_name` (not UTF-8). Reasons
are short codes (`[a-z0-9_]+`, valid MLflow metric names); the detail says the rest.
"""

from __future__ import annotations

from spark_trainer.video.probe import MediaInfo

REASONS = ("symlink", "not_regular_file", "undecodable_name", "empty_file", "unsupported_container",
           "unreadable_container", "no_video_stream", "too_many_pixels", "duration_out_of_bounds", "no_audio",
           "decode_error", "truncated", "unsupported_type", "unreadable_image", "unreadable_audio")


def check_probe(info: MediaInfo, min_duration_s: float, max_duration_s: float, require_audio: bool,
                max_pixels: int) -> tuple[str, str] | None:
    """(reason, detail) for the first check that fails before decoding, or None."""
    if not info.has_video:
        return "no_video_stream", f"{info.container} container without a video stream"
    pixels = (info.width or 0) * (info.height or 0)
    if pixels > max_pixels:
        return "too_many_pixels", (f"{info.width}x{info.height} = {pixels} pixels per frame is over "
                                   f"ingest_video.max_pixels ({max_pixels})")
    if info.duration_s is None:
        return "duration_out_of_bounds", "the container declares no duration"
    if not min_duration_s <= info.duration_s <= max_duration_s:
        return "duration_out_of_bounds", f"{info.duration_s:.3f} s is outside [{min_duration_s}, {max_duration_s}] s"
    if require_audio and not info.has_audio:
        return "no_audio", "no audio stream (ingest_video.integrity.require_audio is true)"
    return None


def check_decoded(info: MediaInfo, frames_decoded: int, decoded_until_s: float, decode_error: str | None,
                  tolerance_s: float) -> tuple[str, str] | None:
    """(reason, detail) when decoding shows a broken file, or None."""
    if frames_decoded == 0:
        return "decode_error", decode_error or "no frame could be decoded"
    declared = info.duration_s or 0.0
    if decoded_until_s < declared - tolerance_s:
        detail = f"frames decode up to {decoded_until_s:.3f} s of a declared {declared:.3f} s"
        return "truncated", detail + (f" ({decode_error})" if decode_error else "")
    return None
