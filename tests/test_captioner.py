"""The captioner: held-out splits, training on frames, the Hugging Face layout, loading
it back as an ingest captions backend, and beating a constant caption."""

import pytest

from spark_trainer.errors import ModelSourceError
from spark_trainer.evaluation import coco
from spark_trainer.modeling import captioner
from spark_trainer.params import validate_section
from spark_trainer.training import captioning, trainer
from spark_trainer.video import synthetic
from spark_trainer.video.captions import caption_frames
from spark_trainer.video.frames import Frame, read_frames, write_shards
from tests.conftest import deep_merge, repo_params

SCENES = [synthetic.Scene("circle", "red", "white", False), synthetic.Scene("square", "blue", "black", False),
          synthetic.Scene("triangle", "yellow", "gray", False), synthetic.Scene("circle", "green", "black", False)]


def make_frames(per_scene: int = 8, size: int = 64) -> list[Frame]:
    """Two 'videos' of the four scenes above, the shape moving along each scene."""
    import io

    from PIL import Image

    frames = []
    for v in range(2):
        for s, scene in enumerate(SCENES):
            for i in range(per_scene):
                buf = io.BytesIO()
                Image.fromarray(synthetic.draw_frame(scene, (i + 0.5 * v) / per_scene, size)).save(buf, "JPEG")
                f = Frame(f"video-{v}", len(frames), s + i / per_scene, buf.getvalue(), "0" * 16, scene_id=s,
                          caption=scene.caption, caption_backend="reference")
                frames.append(f)
    return frames


def _params(**changes):
    return validate_section("train_captioner", deep_merge(repo_params()["train_captioner"], changes))


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    write_shards(make_frames(), root, shard_size=20)
    return root


def test_split_by_time_holds_out_the_end_of_every_scene(frames_dir):
    rows = read_frames(frames_dir)
    train, held = captioning.split_frames(rows, "time", 0.25)
    assert len(train) + len(held) == len(rows) == 64 and len(held) == 16
    groups = {(r["video_id"], r["scene_id"]) for r in rows}
    for key in groups:
        t_max = max(r["timestamp_s"] for r in train if (r["video_id"], r["scene_id"]) == key)
        assert all(r["timestamp_s"] > t_max for r in held if (r["video_id"], r["scene_id"]) == key)


def test_split_by_video_holds_out_whole_videos(frames_dir):
    train, held = captioning.split_frames(read_frames(frames_dir), "video", 0.2)
    assert {r["video_id"] for r in held} == {"video-1"} and {r["video_id"] for r in train} == {"video-0"}


@pytest.fixture(scope="module")
def trained(frames_dir, tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the stage's default: tiny models train faster on one thread
    p = _params(holdout="time", max_steps=150, warmup_steps=10, logging_steps=10, save_steps=150)
    rows = read_frames(frames_dir)
    train_rows, held = captioning.split_frames(rows, p.holdout, p.holdout_fraction)
    tok = captioner.build_tokenizer([r["caption"] for r in train_rows])
    processor = captioner.build_image_processor(p.image_size)
    model = captioner.build_model(tok, p.image_size, p.encoder, p.decoder, p.block_size, p.seed)
    train_set = captioning.encode(train_rows, processor, tok, p.block_size)
    before = captioning.mean_loss(model, train_set, 16)
    work = tmp_path_factory.mktemp("captioner")
    outcome = trainer.train_model(model, train_set, p, work / "checkpoints", work / "plots", "fp")
    after = captioning.mean_loss(model, train_set, 16)
    captioner.save(work / "model", model, tok, processor)
    torch.set_num_threads(threads)
    return {"dir": work, "before": before, "after": after, "steps": outcome.global_step, "train": train_rows,
            "held": held}


def test_training_lowers_the_loss_and_logs_it_to_dvclive(trained):
    assert trained["steps"] == 150 and trained["after"] < trained["before"] * 0.3
    loss_tsv = trained["dir"] / "plots/plots/metrics/train/loss.tsv"
    assert loss_tsv.is_file() and len(loss_tsv.read_text().splitlines()) > 5


def test_saved_in_the_hugging_face_layout_and_loads_back(trained):
    folder = trained["dir"] / "model"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
            "generation_config.json"} <= names
    loaded = captioner.Captioner(str(folder))
    images = captioner.decode_jpegs([r["jpeg"] for r in trained["held"][:3]])
    texts = loaded.caption(images, max_new_tokens=12, batch_size=2)
    assert len(texts) == 3 and all(t.startswith("a ") and t.endswith("background") for t in texts)


def test_beats_a_constant_caption_on_held_out_frames(trained):
    held = trained["held"]
    model = captioner.Captioner(str(trained["dir"] / "model"))
    preds = model.caption(captioner.decode_jpegs([r["jpeg"] for r in held]), 12, 16)
    ids = [r["frame_id"] for r in held]
    refs = {r["frame_id"]: [r["caption"]] for r in held}
    constant = coco.constant_caption([r["caption"] for r in trained["train"]])
    scores = {}
    for name, texts in (("model", preds), ("constant", [constant] * len(held))):
        ann, res = coco.coco_caption_files(ids, refs, dict(zip(ids, texts, strict=True)))
        gts, res = coco.gts_res(ann, res)
        scores[name] = coco.caption_scores(coco.tokenize(gts, "python"), coco.tokenize(res, "python"))
    assert scores["model"]["CIDEr-D"] > scores["constant"]["CIDEr-D"] + 1.0


def test_ingest_hf_backend_captions_frames_with_the_saved_model(trained):
    frames = make_frames(per_scene=1)
    folder = str(trained["dir"] / "model")
    assert caption_frames(frames, "hf", {}, folder, 12, 4) == len(frames)
    assert all(f.caption and f.caption_backend == f"hf:{folder}" for f in frames)


def test_a_missing_captioner_says_how_to_fix_it(tmp_path):
    with pytest.raises(ModelSourceError, match="save_pretrained"):
        captioner.Captioner(str(tmp_path / "missing"))


def test_params_reject_an_image_size_that_patches_do_not_tile():
    from spark_trainer.errors import ParamsError

    with pytest.raises(ParamsError, match="image_size must be a multiple of encoder.patch_size"):
        _params(image_size=60)
    with pytest.raises(ParamsError, match=r"train_captioner\.holdout"):
        _params(holdout="random")
