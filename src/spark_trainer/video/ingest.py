"""Ingest a folder of videos, images and audio files into one manifest.

    python stages/ingest_video.py data/sample_media data/ingest_video metrics/ingest_video.json

Each file is routed by extension. A video is probed, checked, decoded into frames,
split into scenes, its audio transcribed and its frames captioned; an image is stripped
of EXIF/GPS and re-encoded; an audio file is probed and transcribed. A file that fails
a check is quarantined: it gets a manifest item with its reason and the stage goes on.
Symlinks are quarantined unread (never followed), and every media file is opened as the
container its extension names (containers.py), so no file makes FFmpeg read another.
Items link up through ids: frames and scenes name their video, frames name their
scene and the transcript segments they overlap.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from spark_trainer.data.manifest import sha256_bytes
from spark_trainer.params import IngestVideoParams
from spark_trainer.video import audio, captions, containers, images, integrity, probe, scenes, transcription
from spark_trainer.video import frames as frame_ops

log = logging.getLogger(__name__)
STAGE = "ingest_video"


@dataclass
class IngestOutput:
    items: list[dict] = field(default_factory=list)         # manifest: files first, then frames
    frames: list[frame_ops.Frame] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)   # processed_path -> bytes (clean images)
    metrics: dict = field(default_factory=dict)


def display_name(name: str) -> str:
    """The file name as text that JSON and logs can always take: a name that is not UTF-8
    (Python holds its bytes as surrogates) keeps those bytes as `\\xff` escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def item_id(kind: str, name: str) -> str:
    """A safe, stable id from any file name (spaces, unicode, `..`, bytes that are not
    UTF-8): an ASCII slug plus a hash of the exact name's bytes, so two names that slug
    alike stay apart and no id is a path."""
    slug = unicodedata.normalize("NFKD", display_name(name)).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", slug).strip("-")[:40] or "file"
    return f"{kind}-{slug}-{hashlib.sha256(os.fsencode(name)).hexdigest()[:8]}"


def classify(name: str, p: IngestVideoParams) -> str | None:
    ext = Path(name).suffix.lower()
    for kind in ("video", "image", "audio"):
        if ext in getattr(p.extensions, kind):
            return kind
    return None


def _item(kind: str, name: str, source: str, created_at: str, size: int, checksum: str) -> dict:
    shown = display_name(name)
    return {
        "id": item_id(kind, name),
        "source_path": f"{source.rstrip('/')}/{shown}",
        "processed_path": "",
        "content_type": kind,
        "mime_type": mimetypes.guess_type(shown)[0] or "application/octet-stream",
        "size_bytes": size,
        "checksum": checksum,
        "metadata": {"file_name": shown},
        "annotations": {},
        "quality_scores": {"integrity": "ok"},
        "created_at": created_at,
        "lineage": {"source": source, "parent_ids": [], "stage": STAGE},
    }


def _base_item(kind: str, path: Path, source: str, created_at: str) -> dict:
    """The item of a regular file, with the size and checksum of its bytes."""
    return _item(kind, path.name, source, created_at, *probe.fingerprint(path))


def _listing_problem(path: Path) -> tuple[str, str] | None:
    """(reason, detail) for a folder entry quarantined before anything opens it, or None.
    `is_symlink` comes first: `is_file` and `stat` would follow the link."""
    if path.is_symlink():
        return "symlink", "a symbolic link: links are never followed; put the file itself in the folder"
    if not path.is_file():
        return "not_regular_file", "not a regular file (a FIFO, socket or device)"
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        return "undecodable_name", "the file name is not valid UTF-8 (its bytes are kept as \\x escapes); rename it"
    return None


def _listing_item(path: Path, reason: str, detail: str, p: IngestVideoParams, source: str, created_at: str) -> dict:
    """The quarantined item of an entry `_listing_problem` turned away. A symlink is never
    followed: its size and checksum are those of the link itself (the target path, which
    the manifest does not show); a FIFO or device is not read."""
    kind = classify(display_name(path.name), p) or "video"
    if reason == "symlink":
        target = os.fsencode(os.readlink(path))
        item = _item(kind, path.name, source, created_at, len(target), sha256_bytes(target))
    elif reason == "not_regular_file":
        item = _item(kind, path.name, source, created_at, 0, sha256_bytes(b""))
    else:
        item = _base_item(kind, path, source, created_at)
    return _quarantine(item, reason, detail)


def _quarantine(item: dict, reason: str, detail: str) -> dict:
    item["quality_scores"] = {"integrity": "quarantined"}
    item["annotations"] = {"quarantine": {"reason": reason, "detail": detail}}
    log.warning("quarantined %s: %s (%s)", item["metadata"]["file_name"], reason, detail)
    return item


def _unsupported(path: Path, source: str, created_at: str) -> dict:
    """A file of no configured type, quarantined. Its content_type follows its MIME type;
    a text file keeps its text (the manifest's rule for text items), anything else is
    filed under video, what the folder is ingested for."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    kind = next((k for k in ("image", "audio", "video") if mime.startswith(k + "/")), "video")
    text = None
    if mime.startswith("text/") and path.stat().st_size <= 1 << 20:
        with containers.open_file(path) as f:
            data = f.read()
        try:
            text = data.decode("utf-8") if data.decode("utf-8").encode("utf-8") == data else None
        except UnicodeDecodeError:
            text = None
    item = _base_item("text" if text is not None else kind, path, source, created_at)
    if text is not None:
        item["text"] = text
    return _quarantine(item, "unsupported_type", f"extension '{path.suffix}' is not configured in "
                                                 "ingest_video.extensions")


def _overlapping(segments: list[dict], start: float, end: float) -> list[int]:
    return [s["id"] for s in segments if s["start_s"] < end and s["end_s"] > start]


def _transcript(path: Path, transcriber, skipped_reason: str) -> dict:
    if transcriber is None:
        return {"status": "skipped", "reason": skipped_reason, "segments": []}
    return {"status": "ok", "reason": "", "segments": transcriber.transcribe(audio.load_mono_16k(path))}


def ingest_video(path: Path, item: dict, p: IngestVideoParams, transcriber, skipped_reason: str,
                 truth: dict | None) -> tuple[dict, list[frame_ops.Frame], dict]:
    """One video: (manifest item, kept frames, per-video numbers for the metrics)."""
    stats: dict = {}
    try:
        info = probe.probe(path)
    except probe.ProbeError as e:
        return _quarantine(item, e.reason, e.detail), [], stats
    item["metadata"].update(info.as_metadata())
    failed = integrity.check_probe(info, p.integrity.min_duration_s, p.integrity.max_duration_s,
                                   p.integrity.require_audio, p.max_pixels)
    if failed:
        return _quarantine(item, *failed), [], stats
    f = p.frames
    extraction = frame_ops.extract(path, item["id"], f.mode, f.fps, f.size, f.max_per_video, f.jpeg_quality,
                                   p.dedup.hash_size)
    failed = integrity.check_decoded(info, extraction.frames_decoded, extraction.decoded_until_s, extraction.error,
                                     p.integrity.truncation_tolerance_s)
    if failed:
        return _quarantine(item, *failed), [], stats

    found = scenes.detect(path, p.scenes.detector, p.scenes.threshold, p.scenes.min_scene_len, info.duration_s)
    kept, dropped = (frame_ops.drop_near_duplicates(extraction.frames, p.dedup.max_distance)
                     if p.dedup.enabled else (extraction.frames, 0))
    transcript = _transcript(path, transcriber, skipped_reason) if info.has_audio else \
        {"status": "no_audio", "reason": "the video has no audio stream", "segments": []}
    for fr in kept:
        fr.scene_id = scenes.scene_at(found, fr.timestamp_s)
        fr.transcript_segments = _overlapping(transcript["segments"], fr.timestamp_s, fr.timestamp_s + 1e-3)
    for s in found:
        s["frame_ids"] = [fr.frame_id for fr in kept if fr.scene_id == s["scene_id"]]
        s["transcript_segment_ids"] = _overlapping(transcript["segments"], s["start_s"], s["end_s"])
    item["processed_path"] = "frames"
    item["metadata"].update({"frames_decoded": extraction.frames_decoded, "frames_sampled": len(extraction.frames),
                             "frames_kept": len(kept), "frames_dropped_duplicate": dropped})
    item["annotations"] = {"scenes": found, "transcript": transcript, "frame_ids": [fr.frame_id for fr in kept]}
    stats = {"frames_sampled": len(extraction.frames), "frames_dropped_duplicate": dropped, "scenes": len(found)}
    if truth is not None:
        stats["cuts"] = scenes.match_cuts(scenes.cut_frames(found), truth["cut_frames"], tolerance=1)
    return item, kept, stats


def ingest_image(path: Path, item: dict, image_format: str, max_pixels: int) -> tuple[dict, bytes | None]:
    try:
        clean = images.clean(path, image_format, max_pixels)
    except images.TooManyPixels as e:
        return _quarantine(item, "too_many_pixels", str(e)), None
    except containers.UnsupportedContainer as e:
        return _quarantine(item, "unsupported_container", str(e)), None
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises SyntaxError for some broken files
        return _quarantine(item, "unreadable_image", f"Pillow could not read it as "
                                                     f"{containers.image_format(path)}: {type(e).__name__}"), None
    source = {"source_checksum": item["checksum"], "source_size_bytes": item["size_bytes"]}
    item["processed_path"] = f"images/{item['id']}.{image_format}"
    item["mime_type"] = "image/png" if image_format == "png" else "image/jpeg"
    item["size_bytes"], item["checksum"] = len(clean.data), sha256_bytes(clean.data)
    item["metadata"].update({**clean.metadata, **source})
    return item, clean.data


def ingest_audio(path: Path, item: dict, transcriber, skipped_reason: str) -> dict:
    try:
        info = probe.probe(path)
    except probe.ProbeError as e:
        reason = e.reason if e.reason in ("empty_file", "unsupported_container") else "unreadable_audio"
        return _quarantine(item, reason, e.detail)
    if not info.has_audio:
        return _quarantine(item, "unreadable_audio", f"{info.container} container without an audio stream")
    item["metadata"].update({k: v for k, v in info.as_metadata().items()
                             if k in ("container", "duration_s", "audio_codec", "sample_rate", "channels")})
    item["annotations"] = {"transcript": _transcript(path, transcriber, skipped_reason)}
    return item


def _frame_items(frames: list[frame_ops.Frame], shard_names: list[str], shard_size: int, source: str,
                 created_at: str, size: int) -> list[dict]:
    out = []
    for n, fr in enumerate(frames):
        out.append({
            "id": fr.frame_id, "source_path": "", "processed_path": shard_names[n // shard_size],
            "content_type": "image", "mime_type": "image/jpeg", "size_bytes": len(fr.jpeg),
            "checksum": sha256_bytes(fr.jpeg),
            "metadata": {"video_id": fr.video_id, "timestamp_s": fr.timestamp_s, "scene_id": fr.scene_id,
                         "row": n % shard_size, "phash": fr.phash, "width": size, "height": size},
            "annotations": {"caption": fr.caption, "caption_backend": fr.caption_backend,
                            "transcript_segment_ids": fr.transcript_segments},
            "quality_scores": {}, "created_at": created_at,
            "lineage": {"source": source, "parent_ids": [fr.video_id], "stage": STAGE},
        })
    return out


def ingest_folder(source: Path, p: IngestVideoParams, truth: dict | None, created_at: str, out_dir: Path,
                  device="cpu") -> IngestOutput:
    """Everything in `source` (top level, sorted by name) into `out_dir`'s frame shards,
    plus the manifest items and metrics (the caller writes those). Whisper and the `hf`
    captioner run on `device` (compute.device)."""
    if not source.is_dir():
        from spark_trainer.errors import InputDataError

        raise InputDataError(f"ingest_video.source '{source}' is not a folder; point it at a folder of media files")
    result = IngestOutput()
    src = str(source)
    resolved = transcription.resolve_checkpoint(p.transcription.backend, p.transcription.checkpoint,
                                                  p.transcription.checkpoint_sha256)
    transcriber = None
    if resolved.checkpoint is not None:
        transcriber = transcription.Transcriber(resolved.checkpoint, p.transcription.language, device)
    entries = sorted(source.iterdir(), key=lambda e: e.name)
    folders = [e for e in entries if e.is_dir() and not e.is_symlink()]
    files = [e for e in entries if e not in folders and e.name != "ground_truth.json"]  # symlinks too: counted
    kinds: Counter = Counter()
    reasons: Counter = Counter()
    per_video: dict[str, dict] = {}
    truth_videos = (truth or {}).get("videos", {})
    truth_by_id: dict[str, dict | None] = {}
    for path in files:
        kind = classify(path.name, p)
        problem = _listing_problem(path)
        if problem is not None:
            result.items.append(_listing_item(path, *problem, p, src, created_at))
        elif kind is None:
            result.items.append(_unsupported(path, src, created_at))
        elif kind == "video":
            item = _base_item(kind, path, src, created_at)
            item, kept, stats = ingest_video(path, item, p, transcriber, resolved.reason,
                                             truth_videos.get(path.name))
            result.items.append(item)
            result.frames += kept
            if stats:
                per_video[path.name] = stats
                truth_by_id[item["id"]] = truth_videos.get(path.name)
        elif kind == "image":
            item, data = ingest_image(path, _base_item(kind, path, src, created_at), p.image_format, p.max_pixels)
            result.items.append(item)
            if data is not None:
                result.files[item["processed_path"]] = data
        else:
            result.items.append(ingest_audio(path, _base_item(kind, path, src, created_at), transcriber,
                                             resolved.reason))
        last = result.items[-1]
        if last["quality_scores"]["integrity"] == "ok":
            kinds[last["content_type"]] += 1
        else:
            reasons[last["annotations"]["quarantine"]["reason"]] += 1

    c = p.captions
    captioned = captions.caption_frames(result.frames, c.backend, truth_by_id, c.model, c.max_new_tokens,
                                        c.batch_size, device)
    shard_names = frame_ops.write_shards(result.frames, out_dir, p.frames.shard_size)
    result.items += _frame_items(result.frames, shard_names, p.frames.shard_size, src, created_at, p.frames.size)
    result.metrics = _metrics(files, folders, kinds, reasons, per_video, result, truth,
                              resolved, transcriber, c.backend, captioned, shard_names)
    return result


def _metrics(files, folders, kinds, reasons, per_video, result, truth, resolved, transcriber, caption_backend,
             captioned, shard_names) -> dict:
    ok = sum(kinds.values())
    quarantined = sum(reasons.values())
    segments = sum(len(it["annotations"].get("transcript", {}).get("segments", [])) for it in result.items
                   if it["content_type"] in ("video", "audio"))
    metrics = {
        "files_in": len(files),
        "folders_ignored": len(folders),  # top level only
        "ok": {k: kinds.get(k, 0) for k in ("video", "image", "audio")},
        "quarantined": {"total": quarantined, "by_reason": dict(sorted(reasons.items()))},
        "balanced": len(files) == ok + quarantined,
        "frames": {"sampled": sum(s["frames_sampled"] for s in per_video.values()),
                   "dropped_duplicate": sum(s["frames_dropped_duplicate"] for s in per_video.values()),
                   "kept": len(result.frames), "shards": len(shard_names)},
        "scenes": sum(s["scenes"] for s in per_video.values()),
        "transcription": {"status": "ok" if transcriber is not None else "skipped", "reason": resolved.reason,
                          "backend": "whisper" if transcriber is not None else "none", "segments": segments},
        "captions": {"backend": caption_backend, "frames_captioned": captioned},
    }
    if truth is not None:
        cut_stats = [s["cuts"] for s in per_video.values() if "cuts" in s]
        metrics["cuts"] = {
            "videos_compared": len(cut_stats),
            "planted": sum(s["planted"] for s in cut_stats), "detected": sum(s["detected"] for s in cut_stats),
            "matched_within_1_frame": sum(s["matched"] for s in cut_stats),
            "missed": sum(s["missed"] for s in cut_stats), "extra": sum(s["extra"] for s in cut_stats),
            "max_frame_error": max((s["max_frame_error"] for s in cut_stats), default=0),
            "frame_error_histogram": dict(sorted(Counter(str(e) for s in cut_stats for e in s["frame_errors"]).items())),
        }
        got = {it["metadata"]["file_name"]: it["annotations"]["quarantine"]["reason"] for it in result.items
               if it["quality_scores"].get("integrity") == "quarantined"}
        expected = truth.get("bad_files", {})
        metrics["bad_files"] = {"expected": len(expected),
                                "quarantined_with_expected_reason": sum(got.get(n) == r for n, r in expected.items()),
                                "mismatches": {n: {"expected": r, "got": got.get(n, "ok")}
                                               for n, r in sorted(expected.items()) if got.get(n) != r}}
    return metrics
