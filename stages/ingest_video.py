"""Ingest a folder of videos (and stand-alone images and audio files) into one manifest.

    python stages/ingest_video.py data/sample_media data/ingest_video metrics/ingest_video.json

Writes `manifest.jsonl` (the manifest schema of docs/stages/prepare.md: videos, their
frames, images, audio files and quarantined files with their reasons), `frames/shard-*.parquet` (JPEG bytes, video id,
timestamp, scene id, caption) and `images/` (EXIF-free copies). Items' `created_at` is
SOURCE_DATE_EPOCH, else 1970-01-01T00:00:00Z: never the clock or the commit (see `build_timestamp`
in spark_trainer/data/manifest.py), so the same inputs give the same bytes.
"""

import json
import logging

from spark_trainer import devices, tracking
from spark_trainer.data.manifest import build_timestamp
from spark_trainer.errors import InputDataError
from spark_trainer.outputs import atomic_path, write_jsonl_atomic, write_metrics, write_timings
from spark_trainer.params import IngestVideoParams, load_section
from spark_trainer.stage import Timer, entrypoint, path_args
from spark_trainer.video.ingest import ingest_folder

log = logging.getLogger("ingest_video")


@entrypoint
def main() -> None:
    args = path_args(__doc__, "source", "out_dir", "metrics")

    p: IngestVideoParams = load_section("ingest_video")
    created_at = build_timestamp()  # checks SOURCE_DATE_EPOCH before any work
    device = devices.stage_device("ingest_video")  # Whisper and the hf captioner, when configured
    timer = Timer()
    truth = None
    if p.ground_truth:
        try:
            with open(p.ground_truth, encoding="utf-8") as f:
                truth = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise InputDataError(f"ingest_video.ground_truth '{p.ground_truth}' unreadable ({e}); "
                                 f"set it to \"\" for data without planted ground truth") from e

    with timer.phase("ingest"), atomic_path(args.out_dir) as tmp:
        tmp.mkdir()
        result = ingest_folder(args.source, p, truth, created_at, tmp, device)
        for rel, data in result.files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        write_jsonl_atomic(tmp / "manifest.jsonl", result.items)
    m = result.metrics
    log.info("%d files: %s ok, %d quarantined %s; %d frames kept", m["files_in"], m["ok"], m["quarantined"]["total"],
             m["quarantined"]["by_reason"], m["frames"]["kept"])

    write_metrics(args.metrics, m)
    write_timings(args.metrics, timer.total())
    tracking.mirror_stage("ingest_video", p, args.metrics)


if __name__ == "__main__":
    main()
