"""Scene boundaries through PySceneDetect, in seconds and frames, and how detected cuts
compare with planted ones."""

from __future__ import annotations

from pathlib import Path

from spark_trainer.video import containers


def detect(path: Path, detector: str, threshold: float, min_scene_len: int, duration_s: float) -> list[dict]:
    """Scenes `{scene_id, start_s, end_s, start_frame, end_frame}`; a video without a cut
    is one scene. PySceneDetect reads through PyAV (no OpenCV video I/O), from a container
    opened as the format the file's extension names."""
    from scenedetect import AdaptiveDetector, ContentDetector, SceneManager, ThresholdDetector

    from spark_trainer.video.scene_stream import ContainerStream

    detectors = {
        "content": lambda: ContentDetector(threshold=threshold, min_scene_len=min_scene_len),
        "adaptive": lambda: AdaptiveDetector(adaptive_threshold=threshold, min_scene_len=min_scene_len),
        "threshold": lambda: ThresholdDetector(threshold=threshold, min_scene_len=min_scene_len),
    }
    with containers.open_container(path) as container:
        video = ContainerStream(container, path.stem)
        manager = SceneManager()
        manager.add_detector(detectors[detector]())
        manager.detect_scenes(video, show_progress=False)
        found = manager.get_scene_list()
        rate = float(video.frame_rate)
    if not found:
        frames = round(duration_s * rate)
        return [{"scene_id": 0, "start_s": 0.0, "end_s": round(duration_s, 6), "start_frame": 0, "end_frame": frames}]
    return [{"scene_id": i, "start_s": round(start.seconds, 6), "end_s": round(end.seconds, 6),
             "start_frame": start.frame_num, "end_frame": end.frame_num} for i, (start, end) in enumerate(found)]


def cut_frames(scenes: list[dict]) -> list[int]:
    """The frame at which each scene after the first starts."""
    return [s["start_frame"] for s in scenes[1:]]


def scene_at(scenes: list[dict], t: float) -> int:
    for s in scenes:
        if s["start_s"] - 1e-6 <= t < s["end_s"] - 1e-6:
            return s["scene_id"]
    return scenes[-1]["scene_id"] if scenes else -1


def match_cuts(detected: list[int], planted: list[int], tolerance: int) -> dict:
    """Greedy one-to-one matching of detected to planted cut frames within `tolerance`."""
    free = sorted(detected)
    errors = []
    for p in sorted(planted):
        best = min(free, key=lambda d: abs(d - p), default=None)
        if best is not None and abs(best - p) <= tolerance:
            errors.append(abs(best - p))
            free.remove(best)
    return {"planted": len(planted), "detected": len(detected), "matched": len(errors),
            "missed": len(planted) - len(errors), "extra": len(free),
            "max_frame_error": max(errors, default=0), "frame_errors": errors}
