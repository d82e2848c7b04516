"""Frames out of a video: decode once, sample at a rate (or keyframes only), resize,
JPEG-encode, drop near duplicates by perceptual hash, store as sharded Parquet.

Thousands of small JPEG files are slow to list, copy and hash (DVC hashes each one);
a few Parquet shards holding JPEG bytes plus video id, timestamp and scene id are not.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from spark_trainer.video import containers


@dataclass
class Frame:
    video_id: str
    index: int            # position among the sampled frames of its video
    timestamp_s: float
    jpeg: bytes
    phash: str
    scene_id: int = -1
    caption: str | None = None
    caption_backend: str | None = None
    transcript_segments: list[int] = field(default_factory=list)

    @property
    def frame_id(self) -> str:
        return f"{self.video_id}/f{self.index:05d}"


@dataclass(frozen=True)
class Extraction:
    frames: list[Frame]
    frames_decoded: int
    decoded_until_s: float    # timestamp of the last decoded frame + one frame period
    error: str | None         # the decode error that stopped decoding, if any


def extract(path: Path, video_id: str, mode: str, fps: float, size: int, max_frames: int, jpeg_quality: int,
            hash_size: int) -> Extraction:
    """Decode every frame (inter-frame codecs need it), keep one per 1/fps seconds (or
    every keyframe), convert only the kept ones. A decode error ends decoding and is
    reported, not raised: the integrity check decides what it means."""
    import av
    import imagehash
    from av.video.reformatter import VideoReformatter

    frames: list[Frame] = []
    decoded, last_t, period, error = 0, 0.0, 0.0, None
    packets_until = 0.0  # end of the last demuxed packet: how far a keyframes-only pass got
    next_t = 0.0
    try:
        with containers.open_container(path) as container:
            stream = container.streams.video[0]
            if mode == "keyframes":
                stream.codec_context.skip_frame = "NONKEY"
            rate = float(stream.average_rate) if stream.average_rate else 25.0
            period = 1.0 / rate
            # One scaler for the whole video: frame.reformat() builds a new one per frame (~1 ms each).
            scaler = VideoReformatter()
            for packet in container.demux(stream):
                if packet.pts is not None and packet.time_base is not None:
                    packets_until = max(packets_until, float((packet.pts + (packet.duration or 0)) * packet.time_base))
                for frame in packet.decode():
                    decoded += 1
                    t = float(frame.time) if frame.time is not None else (decoded - 1) * period
                    last_t = max(last_t, t)
                    if len(frames) >= max_frames:
                        continue  # keep decoding: the integrity check needs to reach the end
                    if mode == "fps":
                        if t + 1e-6 < next_t:
                            continue
                        while next_t <= t + 1e-6:  # on a fixed grid (k / fps), so the rate does not drift
                            next_t += 1.0 / fps
                    image = scaler.reformat(frame, width=size, height=size, format="rgb24").to_image()
                    buf = io.BytesIO()
                    image.save(buf, format="JPEG", quality=jpeg_quality)
                    frames.append(Frame(video_id, len(frames), round(t, 6), buf.getvalue(),
                                        str(imagehash.phash(image, hash_size=hash_size))))
    except (av.error.FFmpegError, ValueError) as e:
        error = f"decoding stopped: {getattr(e, 'strerror', None) or type(e).__name__}"
    until = last_t + period if decoded else 0.0
    if mode == "keyframes" and decoded:
        until = max(until, packets_until)  # frames between keyframes were skipped, not missing
    return Extraction(frames, decoded, round(until, 6), error)


def drop_near_duplicates(frames: list[Frame], max_distance: int) -> tuple[list[Frame], int]:
    """Keep a frame only when its perceptual hash is more than `max_distance` bits away
    from the last kept frame of the same video (a static shot keeps its first frame)."""
    import imagehash

    kept: list[Frame] = []
    dropped = 0
    last: dict[str, imagehash.ImageHash] = {}
    for f in frames:
        h = imagehash.hex_to_hash(f.phash)
        if f.video_id in last and h - last[f.video_id] <= max_distance:
            dropped += 1
            continue
        last[f.video_id] = h
        kept.append(f)
    return kept, dropped


FRAME_COLUMNS = ("frame_id", "video_id", "timestamp_s", "scene_id", "jpeg", "phash", "caption", "caption_backend")


def write_shards(frames: list[Frame], out_dir: Path, shard_size: int) -> list[str]:
    """Parquet shards `frames/shard-00000.parquet`, ...; returns their names relative to out_dir."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (out_dir / "frames").mkdir(parents=True, exist_ok=True)
    names = []
    for n, start in enumerate(range(0, len(frames), shard_size)):
        chunk = frames[start:start + shard_size]
        table = pa.table({
            "frame_id": [f.frame_id for f in chunk],
            "video_id": [f.video_id for f in chunk],
            "timestamp_s": pa.array([f.timestamp_s for f in chunk], pa.float64()),
            "scene_id": pa.array([f.scene_id for f in chunk], pa.int32()),
            "jpeg": pa.array([f.jpeg for f in chunk], pa.binary()),
            "phash": [f.phash for f in chunk],
            "caption": pa.array([f.caption for f in chunk], pa.string()),
            "caption_backend": pa.array([f.caption_backend for f in chunk], pa.string()),
        })
        name = f"frames/shard-{n:05d}.parquet"
        # No statistics, one row group, fixed writer: the same frames give the same bytes.
        pq.write_table(table, out_dir / name, compression="zstd", write_statistics=False,
                       row_group_size=max(len(chunk), 1))
        names.append(name)
    return names


def read_frames(data_dir: Path) -> list[dict]:
    """Every frame row of the Parquet shards under `data_dir/frames`, in order."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for shard in sorted((data_dir / "frames").glob("shard-*.parquet")):
        rows += pq.read_table(shard).to_pylist()
    return rows
