"""Train a small image captioner (tiny ViT encoder + tiny GPT-2 decoder) on ingested frames.

    python stages/train_captioner.py data/ingest_video models/captioner data/train_captioner \
        checkpoints/train_captioner plots/train_captioner metrics/train_captioner.json

Reads the frame shards and captions of `ingest_video`, holds out frames (by time or by
video, params), trains with the HF Trainer (loss curve to dvclive) and saves the model,
tokenizer and image processor in the Hugging Face layout. `split.json` lists the
held-out frames that `evaluate_coco` scores.
"""

import json
import logging

from spark_trainer import devices, tracking
from spark_trainer.errors import InputDataError
from spark_trainer.modeling import captioner
from spark_trainer.outputs import atomic_path, write_metrics, write_text_atomic, write_timings
from spark_trainer.params import TrainCaptionerParams, load_section
from spark_trainer.stage import Timer, entrypoint, path_args
from spark_trainer.training import captioning, launch, trainer
from spark_trainer.video.frames import read_frames

log = logging.getLogger("train_captioner")


@entrypoint
def main() -> None:
    args = path_args(__doc__, "frames_dir", "model_out", "split_dir", "checkpoints", "plots", "metrics")

    p: TrainCaptionerParams = load_section("train_captioner")
    device = launch.start("train_captioner", p.launcher)
    import torch

    if p.torch_threads:
        torch.set_num_threads(p.torch_threads)
    timer = Timer()
    frames = [f for f in read_frames(args.frames_dir) if f["caption"]]
    if not frames:
        raise InputDataError(f"no captioned frames in {args.frames_dir}; set ingest_video.captions.backend "
                             "to reference (sample) or hf")
    train_frames, held = captioning.split_frames(frames, p.holdout, p.holdout_fraction)

    tok = captioner.build_tokenizer([f["caption"] for f in train_frames])
    processor = captioner.build_image_processor(p.image_size)
    train_set = captioning.encode(train_frames, processor, tok, p.block_size)
    held_set = captioning.encode(held, processor, tok, p.block_size)
    model = captioner.build_model(tok, p.image_size, p.encoder, p.decoder, p.block_size, p.seed)
    log.info("captioner: %d parameters; %d train frames, %d held out (%s)", captioner.parameter_count(model),
             len(train_frames), len(held), p.holdout)

    fingerprint = trainer.fingerprint(p.model_dump(mode="json"), [f["frame_id"] for f in train_frames],
                                      [f["caption"] for f in train_frames])
    with timer.phase("train"):
        outcome = trainer.train_model(model, train_set, p, args.checkpoints, args.plots, fingerprint,
                                      system_metrics=tracking.system_metrics("train_captioner"), device=device)
        model = outcome.model or model  # gathered on rank 0 when the weights were sharded
    if not devices.is_main_process():
        return  # rank 0 evaluates and writes the outputs
    model.to(device)
    with timer.phase("evaluate"):
        train_loss = captioning.mean_loss(model, train_set, p.batch_size)
        held_loss = captioning.mean_loss(model, held_set, p.batch_size) if held else None

    with atomic_path(args.model_out) as tmp:
        captioner.save(tmp, model, tok, processor)
    trainer.clear_checkpoints(args.checkpoints)
    split = {"holdout": p.holdout, "holdout_fraction": p.holdout_fraction,
             "train": [f["frame_id"] for f in train_frames], "heldout": [f["frame_id"] for f in held]}
    with atomic_path(args.split_dir) as tmp:
        tmp.mkdir()
        write_text_atomic(tmp / "split.json", json.dumps(split, indent=1, sort_keys=True) + "\n")

    write_metrics(args.metrics, {
        "parameters": captioner.parameter_count(model), "steps": outcome.global_step, "vocab_size": len(tok),
        "train_frames": len(train_frames), "heldout_frames": len(held), "holdout": p.holdout,
        "distinct_train_captions": len({f["caption"] for f in train_frames}),
        "train_loss": train_loss, "heldout_loss": held_loss,
    })
    write_timings(args.metrics, {**timer.total(), "resumed_from_step": outcome.resumed_from_step})
    tracking.mirror_stage("train_captioner", p, args.metrics, artifacts=[args.model_out / "config.json", args.plots],
                          step_metrics_dir=args.plots)


if __name__ == "__main__":
    main()
