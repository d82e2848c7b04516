"""COCO caption metrics of a captioner on held-out frames, against a constant-caption baseline.

    python stages/evaluate_coco.py models/captioner data/ingest_video data/train_captioner/split.json \
        data/evaluate_coco metrics/evaluate_coco.json

Writes the references and predictions in the COCO caption format
(`captions_references.json`, `captions_results.json`, `captions_baseline_results.json`)
and scores them with pycocoevalcap (BLEU-1..4, ROUGE-L, CIDEr-D; METEOR with Java;
SPICE with its jars). With `detection.annotations` / `detection.results` set, bbox and
segm mAP / AP50 / AP75 come from pycocotools.
"""

import json
import logging

from spark_trainer import devices, tracking
from spark_trainer.errors import InputDataError
from spark_trainer.evaluation import coco
from spark_trainer.modeling.captioner import Captioner, decode_jpegs
from spark_trainer.outputs import atomic_path, write_metrics, write_text_atomic, write_timings
from spark_trainer.params import EvaluateCocoParams, load_section
from spark_trainer.stage import Timer, entrypoint, path_args
from spark_trainer.video.frames import read_frames

log = logging.getLogger("evaluate_coco")


@entrypoint
def main() -> None:
    args = path_args(__doc__, "model", "frames_dir", "split", "out_dir", "metrics")

    p: EvaluateCocoParams = load_section("evaluate_coco")
    tokenizer = coco.resolve_tokenizer(p.tokenizer)
    device = devices.stage_device("evaluate_coco")
    timer = Timer()
    split = json.loads(args.split.read_text(encoding="utf-8"))
    rows = {f["frame_id"]: f for f in read_frames(args.frames_dir)}
    held = [fid for fid in split["heldout"] if fid in rows]
    if not held:
        raise InputDataError(f"{args.split} holds out no frame of {args.frames_dir}; raise "
                             "train_captioner.holdout_fraction or ingest more frames")
    references = {fid: [rows[fid]["caption"]] for fid in held}

    with timer.phase("generate"):
        captioner = Captioner(str(args.model), device)
        texts = captioner.caption(decode_jpegs([rows[fid]["jpeg"] for fid in held]), p.max_new_tokens, p.batch_size)
    predictions = dict(zip(held, texts, strict=True))
    baseline = coco.constant_caption([rows[fid]["caption"] for fid in split["train"] if fid in rows])
    annotations, results = coco.coco_caption_files(held, references, predictions)
    _, baseline_results = coco.coco_caption_files(held, references, {fid: baseline for fid in held})

    meteor_on = p.meteor == "auto" and coco.java_available()
    spice_on, spice_reason = coco.spice_resources() if p.spice == "auto" else (False, "evaluate_coco.spice is off")
    with timer.phase("score"):
        gts, res = coco.gts_res(annotations, results)
        _, base_res = coco.gts_res(annotations, baseline_results)
        gts, res, base_res = coco.tokenize_many([gts, res, base_res], tokenizer)
        meteor = None
        if meteor_on:
            from pycocoevalcap.meteor.meteor import Meteor

            meteor = Meteor()
        model_scores = coco.caption_scores(gts, res, meteor, spice_on)
        baseline_scores = coco.caption_scores(gts, base_res, meteor, spice_on)
        detection = ({"status": "ok", **coco.detection_scores(p.detection.annotations, p.detection.results,
                                                              p.detection.iou_types)}
                     if p.detection.annotations else {"status": "skipped", "reason": "no detection files in params"})

    with atomic_path(args.out_dir) as tmp:
        tmp.mkdir()
        for name, data in (("captions_references.json", annotations), ("captions_results.json", results),
                           ("captions_baseline_results.json", baseline_results)):
            write_text_atomic(tmp / name, json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")

    metrics = {
        "images": len(held), "holdout": split["holdout"], "tokenizer": tokenizer,
        "model": model_scores, "constant_baseline": {"caption": baseline, **baseline_scores},
        "cider_d_over_baseline": model_scores["CIDEr-D"] - baseline_scores["CIDEr-D"],
        "exact_match": sum(predictions[f] == references[f][0] for f in held) / max(len(held), 1),
        "meteor": "ok" if meteor_on else ("Java is not installed" if p.meteor == "auto" else "off"),
        "spice": "ok" if spice_on else spice_reason,
        "detection": detection,
    }
    log.info("CIDEr-D %.3f (constant baseline %.3f) on %d held-out frames", model_scores["CIDEr-D"],
             baseline_scores["CIDEr-D"], len(held))
    write_metrics(args.metrics, metrics)
    write_timings(args.metrics, timer.total())
    tracking.mirror_stage("evaluate_coco", p, args.metrics, artifacts=[args.out_dir])


if __name__ == "__main__":
    main()
