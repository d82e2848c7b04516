"""Per-frame captions through the backend named in params.

- `reference`: the ground-truth caption of the scene a frame falls in (the sample's
  `ground_truth.json`). Honest labels for training; nothing is predicted.
- `hf`: an image-to-text model in the Hugging Face layout: a hub id (BLIP, ...) or a
  local folder such as `models/captioner` written by `train_captioner` in an earlier run
  (`ingest_video` runs before `train_captioner` in the DAG, so it cannot use this run's).
- `none`: no captions.
"""

from __future__ import annotations

from spark_trainer.video.frames import Frame


def reference_caption(truth_video: dict | None, t: float) -> str | None:
    if not truth_video:
        return None
    for scene in truth_video["scenes"]:
        if scene["start_s"] - 1e-6 <= t < scene["end_s"] - 1e-6:
            return scene["caption"]
    return None


def caption_frames(frames: list[Frame], backend: str, truth_by_video: dict[str, dict | None], model: str,
                   max_new_tokens: int, batch_size: int, device="cpu") -> int:
    """Fill `caption` / `caption_backend` in place; return how many frames got one. The
    `hf` model runs on `device` (compute.device)."""
    if backend == "none":
        return 0
    if backend == "reference":
        for f in frames:
            f.caption = reference_caption(truth_by_video.get(f.video_id), f.timestamp_s)
            f.caption_backend = "reference" if f.caption is not None else None
        return sum(f.caption is not None for f in frames)
    from spark_trainer.modeling.captioner import Captioner, decode_jpegs

    captioner = Captioner(model, device)
    texts = captioner.caption(decode_jpegs([f.jpeg for f in frames]), max_new_tokens, batch_size)
    for f, text in zip(frames, texts, strict=True):
        f.caption, f.caption_backend = text, f"hf:{model}"
    return len(frames)
