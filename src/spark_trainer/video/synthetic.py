"""Short synthetic videos with planted scene cuts, audio and reference captions.

    python stages/sample.py data/sample data/sample_media metrics/sample.json

Each video is a run of scenes; each scene is one coloured shape moving over a plain
background, and consecutive scenes change background, so every scene boundary is a
hard cut at a known frame. Some scenes are static shots (the shape does not move): their
frames are near duplicates that ingestion should drop. Every scene has a reference
caption ("a red circle on a white background") built from a small vocabulary that a
tiny captioner can learn. The audio track is a speech-like tone (syllable-rate amplitude
bursts) whose pitch changes with the scene.

The folder also gets the bad input an ingestion stage has to survive (a corrupt file, a
zero-byte file, a truncated video, a text file posing as a video, a video without audio,
a file of an unsupported type) and one photo with EXIF/GPS tags and one WAV file.
`ground_truth.json` records the planted cuts, captions and the reason each bad file
should be quarantined for.

PyAV encodes everything (no ffmpeg binary needed). Encoders run single-threaded with
FFmpeg's bitexact flags, so one seed gives byte-identical files.
"""

from __future__ import annotations

import io
import math
import random
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 230), "yellow": (235, 215, 40)}
BACKGROUNDS = {"black": (10, 10, 10), "white": (245, 245, 245), "gray": (128, 128, 128)}
AUDIO_RATE = 16000

# File names of the planted bad input (odd names on purpose: spaces, unicode, "..").
BAD_FILES = {
    "corrupt.mp4": "unreadable_container",
    "empty.mp4": "empty_file",
    "truncated clip.mp4": "truncated",
    "not a video..mp4": "unreadable_container",
    "silent ünïcode.mp4": "no_audio",
    "notes.txt": "unsupported_type",
}
PHOTO = "photo with gps.jpg"
SPEECH = "speech.wav"


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    static: bool

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def plan_scenes(rng: random.Random, n_videos: int, scenes_per_video: int, static_every: int) -> list[list[Scene]]:
    """Scenes per video; consecutive scenes never share a background (a hard cut), and
    every `static_every`-th scene overall is a static shot (0: none)."""
    videos, count = [], 0
    for _ in range(n_videos):
        scenes: list[Scene] = []
        for _ in range(scenes_per_video):
            backgrounds = [b for b in BACKGROUNDS if not scenes or b != scenes[-1].background]
            count += 1
            scenes.append(Scene(rng.choice(SHAPES), rng.choice(sorted(COLOURS)), rng.choice(backgrounds),
                                static=bool(static_every) and count % static_every == 0))
        videos.append(scenes)
    return videos


def draw_frame(scene: Scene, progress: float, size: int) -> np.ndarray:
    """One RGB frame: the shape at a position that moves left to right with `progress`
    (0..1) unless the scene is static."""
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = BACKGROUNDS[scene.background]
    r = size * 0.22
    cx = size * (0.5 if scene.static else 0.3 + 0.4 * progress)
    cy = size * (0.5 if scene.static else 0.45 + 0.1 * math.sin(progress * math.pi))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if scene.shape == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif scene.shape == "square":
        mask = (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    else:  # triangle, apex up
        mask = (yy <= cy + r * 0.8) & (yy >= cy - r) & (np.abs(xx - cx) <= (yy - (cy - r)) * 0.6)
    img[mask] = COLOURS[scene.colour]
    return img


def scene_audio(scene_index: int, n_samples: int, rng: random.Random) -> np.ndarray:
    """A speech-like tone: a pitch per scene, amplitude bursts at a syllable rate (~4 Hz)."""
    t = np.arange(n_samples, dtype=np.float64) / AUDIO_RATE
    pitch = 140.0 + 40.0 * (scene_index % 4) + rng.uniform(-5, 5)
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 2
    voice = np.sin(2 * np.pi * pitch * t) + 0.5 * np.sin(2 * np.pi * 2 * pitch * t) + 0.25 * np.sin(2 * np.pi * 3 * pitch * t)
    return (0.3 * envelope * voice / 1.75).astype(np.float32)


def encode_video(path: Path, scenes: list[Scene], fps: int, scene_frames: int, size: int, with_audio: bool,
                 rng: random.Random) -> None:
    """MPEG-4 Part 2 video (+ AAC audio) in MP4 with the index up front (faststart), so a
    truncated copy still opens and its truncation shows when it is decoded. Every scene
    starts on a keyframe, as in edited footage."""
    from fractions import Fraction

    import av

    bitexact = {"fflags": "+bitexact", "movflags": "+faststart"}
    with av.open(str(path), "w", format="mp4", options={}, container_options=bitexact) as container:
        video = container.add_stream("mpeg4", rate=fps, options={"flags": "+bitexact", "qscale": "3"})
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        video.codec_context.thread_count = 1
        # Keyframes only where scenes start: a keyframe re-quantises the whole picture, and on
        # a grey background that alone moves hue and saturation enough to look like a cut.
        video.codec_context.gop_size = fps * 3600
        audio = None
        if with_audio:
            audio = container.add_stream("aac", rate=AUDIO_RATE, options={"flags": "+bitexact"})
            audio.layout = "mono"
            audio.codec_context.thread_count = 1
        for s, scene in enumerate(scenes):
            for i in range(scene_frames):
                frame = av.VideoFrame.from_ndarray(draw_frame(scene, i / max(scene_frames - 1, 1), size), format="rgb24")
                frame.pts = s * scene_frames + i
                frame.time_base = Fraction(1, fps)
                if i == 0:
                    frame.pict_type = av.video.frame.PictureType.I
                container.mux(video.encode(frame))
        container.mux(video.encode())
        if audio is not None:
            samples = AUDIO_RATE * scene_frames // fps
            track = np.concatenate([scene_audio(s, samples, rng) for s in range(len(scenes))])
            chunk = 1024
            for start in range(0, len(track), chunk):
                piece = track[start:start + chunk][None, :]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="flt", layout="mono")
                frame.sample_rate = AUDIO_RATE
                frame.pts = start
                frame.time_base = Fraction(1, AUDIO_RATE)
                container.mux(audio.encode(frame))
            container.mux(audio.encode())


def photo_with_gps(size: int) -> bytes:
    """A JPEG carrying camera EXIF tags and a GPS position, for the EXIF-stripping check."""
    from PIL import Image

    img = Image.fromarray(draw_frame(Scene("square", "blue", "white", True), 0.0, size))
    exif = Image.Exif()
    exif[0x010F] = "SparkCam"         # Make
    exif[0x0110] = "Model S"          # Model
    exif[0x0131] = "sample generator"  # Software
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, exif=exif)
    return buf.getvalue()


def wav_bytes(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(AUDIO_RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def generate(out_dir: Path, seed: int, count: int, scenes_per_video: int, scene_seconds: float, fps: int,
             size: int, static_every: int) -> dict:
    """Write the videos, bad files, photo and WAV into `out_dir`; return the ground truth."""
    rng = random.Random(seed)
    scene_frames = round(scene_seconds * fps)
    plans = plan_scenes(rng, count + 2, scenes_per_video, static_every)  # + the silent and truncated videos
    truth: dict = {"fps": fps, "size": size, "scene_frames": scene_frames, "videos": {}, "bad_files": {}}
    for v in range(count):
        name = f"video_{v:02d}.mp4"
        encode_video(out_dir / name, plans[v], fps, scene_frames, size, True, rng)
        truth["videos"][name] = {
            "cut_frames": [s * scene_frames for s in range(1, len(plans[v]))],
            "cut_seconds": [s * scene_frames / fps for s in range(1, len(plans[v]))],
            "scenes": [{"start_s": s * scene_frames / fps, "end_s": (s + 1) * scene_frames / fps,
                        "caption": sc.caption, "static": sc.static} for s, sc in enumerate(plans[v])],
        }
    encode_video(out_dir / "silent ünïcode.mp4", plans[count], fps, scene_frames, size, False, rng)
    whole = out_dir / ".whole.mp4"
    encode_video(whole, plans[count + 1], fps, scene_frames, size, True, rng)
    data = whole.read_bytes()
    whole.unlink()
    (out_dir / "truncated clip.mp4").write_bytes(data[: len(data) * 6 // 10])
    (out_dir / "corrupt.mp4").write_bytes(bytes(rng.getrandbits(8) for _ in range(4096)))
    (out_dir / "empty.mp4").write_bytes(b"")
    (out_dir / "not a video..mp4").write_text("This is a text file with a video's name.\n", encoding="utf-8")
    (out_dir / "notes.txt").write_text("Notes are not media.\n", encoding="utf-8")
    truth["bad_files"] = dict(BAD_FILES)
    (out_dir / PHOTO).write_bytes(photo_with_gps(size))
    speech = np.concatenate([scene_audio(s, AUDIO_RATE, rng) for s in range(2)])
    (out_dir / SPEECH).write_bytes(wav_bytes(speech))
    truth["images"] = {PHOTO: {"has_gps": True}}
    truth["audio"] = {SPEECH: {"duration_s": len(speech) / AUDIO_RATE}}
    return truth


def summary(truth: dict) -> dict:
    from collections import Counter

    scenes = [s for v in truth["videos"].values() for s in v["scenes"]]
    return {
        "videos": len(truth["videos"]),
        "planted_cuts": sum(len(v["cut_frames"]) for v in truth["videos"].values()),
        "scenes": len(scenes),
        "static_scenes": sum(s["static"] for s in scenes),
        "distinct_captions": len({s["caption"] for s in scenes}),
        "bad_files_by_reason": dict(Counter(truth["bad_files"].values())),
        "images": len(truth["images"]),
        "audio_files": len(truth["audio"]),
    }
