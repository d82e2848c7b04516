"""Frames/s of our decode-and-extract path against the `ffmpeg` command line (when it is
installed) and a naive PyAV loop, on the same video in one run.

    .venv/bin/python benchmarks/video_decode_throughput.py --seconds 30 --size 256 --repeats 3

The video is generated (synthetic scenes, MPEG-4 in MP4) unless `--video` names one.
Each side turns it into JPEG frames at `--fps`, resized to `--frame-size`:

- ours: `spark_trainer.video.frames.extract` (decode every frame, convert and encode
  only the sampled ones, perceptual hash included);
- ffmpeg: `ffmpeg -i VIDEO -vf fps=F,scale=S:S -f image2pipe -c:v mjpeg -` (skipped,
  and said so, when the binary is not on PATH);
- naive: PyAV decoding every frame and converting, resizing and JPEG-encoding each one
  before keeping those on the fps grid.

Throughput is source frames decoded per second of wall time (the median of the
repeats); the sides alternate so that a busy machine slows them alike.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spark_trainer.video import frames, synthetic


def make_video(path: Path, seconds: int, size: int, fps: int) -> None:
    rng = random.Random(0)
    scene_seconds = 2
    scenes = synthetic.plan_scenes(rng, 1, max(2, seconds // scene_seconds), static_every=0)[0]
    synthetic.encode_video(path, scenes, fps, scene_seconds * fps, size, with_audio=False, rng=rng)


def ours(path: Path, fps: float, size: int) -> tuple[int, int]:
    out = frames.extract(path, "v", "fps", fps, size, 10**9, 90, 8)
    return out.frames_decoded, len(out.frames)


def naive(path: Path, fps: float, size: int) -> tuple[int, int]:
    import av

    decoded, kept, next_t = 0, 0, 0.0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            decoded += 1
            image = frame.to_image().resize((size, size))
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=90)
            if frame.time + 1e-6 >= next_t:
                kept += 1
                while next_t <= frame.time + 1e-6:
                    next_t += 1.0 / fps
    return decoded, kept


def ffmpeg_cli(path: Path, fps: float, size: int) -> tuple[int, int]:
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-vf", f"fps={fps},scale={size}:{size}",
                          "-f", "image2pipe", "-c:v", "mjpeg", "-q:v", "2", "-"], capture_output=True, check=True).stdout
    return -1, out.count(b"\xff\xd9")  # JPEG end-of-image markers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=None, help="a video to use instead of a generated one")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--size", type=int, default=256, help="generated video width and height")
    parser.add_argument("--source-fps", type=int, default=25)
    parser.add_argument("--fps", type=float, default=4.0, help="frames sampled per second")
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/video_decode_throughput.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        video = args.video or Path(work) / "bench.mp4"
        if args.video is None:
            make_video(video, args.seconds, args.size, args.source_fps)
        import av

        with av.open(str(video)) as c:
            s = c.streams.video[0]
            total = sum(1 for _ in c.decode(s))
            info = {"frames": total, "width": s.codec_context.width, "height": s.codec_context.height,
                    "codec": s.codec_context.name}
        sides = {"ours": ours, "naive_pyav": naive}
        ffmpeg_path = shutil.which("ffmpeg")
        if ffmpeg_path:
            sides["ffmpeg_cli"] = ffmpeg_cli
        times: dict[str, list[float]] = {name: [] for name in sides}
        kept: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, fn in sides.items():
                t0 = time.perf_counter()
                _, kept[name] = fn(video, args.fps, args.frame_size)
                times[name].append(time.perf_counter() - t0)
    fps_of = {name: total / statistics.median(t) for name, t in times.items()}
    report = {
        "command": " ".join(sys.argv), "video": info, "sample_fps": args.fps, "frame_size": args.frame_size,
        "seconds": times, "source_frames_per_second": fps_of, "frames_extracted": kept,
        "ratio_ours_to_naive_pyav": fps_of["ours"] / fps_of["naive_pyav"],
        "ffmpeg_cli": "measured" if ffmpeg_path else "not installed (apt-get install ffmpeg to compare)",
    }
    if ffmpeg_path:
        report["ratio_ours_to_ffmpeg_cli"] = fps_of["ours"] / fps_of["ffmpeg_cli"]
    for name, value in fps_of.items():
        print(f"{name}: {value:.0f} source frames/s ({kept[name]} frames extracted)")
    print("ffmpeg CLI:", report["ffmpeg_cli"] if not ffmpeg_path else f"ours/ffmpeg {report['ratio_ours_to_ffmpeg_cli']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
