"""The captioner's training data and the held-out split that `evaluate_coco` scores; the
training itself is `trainer.train_model`, the loop every training stage shares.

Frames are held out either by time (the last part of every scene: the scene was seen,
these frames of it were not, and the shape sits elsewhere) or by video (the last
videos: whole scenes unseen, though their shapes, colours and backgrounds appear in
training).
"""

from __future__ import annotations

import math
from collections import defaultdict


def split_frames(frames: list[dict], by: str, fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, held out) among `frames` (rows with frame_id, video_id, scene_id,
    timestamp_s, caption). A scene with a single frame stays in training."""
    if by == "video":
        videos = sorted({f["video_id"] for f in frames})
        n = max(1, math.ceil(fraction * len(videos))) if len(videos) > 1 else 0
        held = set(videos[len(videos) - n:])
        return [f for f in frames if f["video_id"] not in held], [f for f in frames if f["video_id"] in held]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for f in frames:
        groups[(f["video_id"], f["scene_id"])].append(f)
    train, held = [], []
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda f: f["timestamp_s"])
        n = math.ceil(fraction * len(group)) if len(group) > 1 else 0
        train += group[: len(group) - n]
        held += group[len(group) - n:]
    return train, held


class CaptionDataset:
    """Training data for `trainer.train_model` (the loop every training stage shares):
    pixel values and label ids (EOS-terminated, padded with -100, which the loss ignores)."""

    def __init__(self, pixel_values, labels) -> None:
        self.pixel_values, self.labels = pixel_values, labels
        self.blocks = labels  # the trainer wrapper reads the sequence length from `blocks`

    def __len__(self) -> int:
        return int(self.pixel_values.shape[0])

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pixel_values[i], "labels": self.labels[i]}


def encode(frames: list[dict], image_processor, tokenizer, max_tokens: int) -> CaptionDataset:
    import torch

    from spark_trainer.modeling.captioner import decode_jpegs

    pixels = image_processor(images=decode_jpegs([f["jpeg"] for f in frames]), return_tensors="pt")["pixel_values"]
    labels = torch.full((len(frames), max_tokens), -100, dtype=torch.long)
    for i, f in enumerate(frames):
        ids = tokenizer(f["caption"])["input_ids"][:max_tokens]
        labels[i, : len(ids)] = torch.tensor(ids)
    return CaptionDataset(pixels, labels)


def mean_loss(model, dataset: CaptionDataset, batch_size: int) -> float:
    """Mean token cross-entropy of the captions given the images."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(dataset), batch_size):
            labels = dataset.labels[i:i + batch_size].to(model.device)
            out = model(pixel_values=dataset.pixel_values[i:i + batch_size].to(model.device), labels=labels)
            n = int((labels != -100).sum())
            total += float(out.loss) * n
            count += n
    return total / max(count, 1)
