"""ingest_video on generated media: planted cuts, quarantine reasons, dedup, EXIF, audio,
Whisper (a tiny checkpoint built here), manifest schema, params errors."""

import io
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from spark_trainer.data.manifest import schema_problems
from spark_trainer.errors import ModelSourceError, ParamsError
from spark_trainer.outputs import sha256_file
from spark_trainer.params import validate_section
from spark_trainer.video import synthetic, transcription
from spark_trainer.video.frames import read_frames
from spark_trainer.video.ingest import ingest_folder, item_id
from tests.conftest import REPO, repo_params, smoke_params, venv_env, write_params

ODD_GOOD_NAME = "my clip ü..mp4"  # a valid video under a name with a space, unicode and ".."


def _params(**overrides):
    raw = repo_params()["ingest_video"]
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[key] = value
    return validate_section("ingest_video", raw)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    truth = synthetic.generate(root, seed=3, count=2, scenes_per_video=3, scene_seconds=1.0, fps=10, size=64,
                               static_every=3)
    shutil.copy(root / "video_01.mp4", root / ODD_GOOD_NAME)
    truth["videos"][ODD_GOOD_NAME] = truth["videos"]["video_01.mp4"]
    (root / "ground_truth.json").write_text(json.dumps(truth))
    return root, truth


@pytest.fixture(scope="module")
def ingested(media, tmp_path_factory):
    root, truth = media
    out = tmp_path_factory.mktemp("ingested")
    result = ingest_folder(root, _params(), truth, "1970-01-01T00:00:00Z", out)
    return result, out


def _by_name(result):
    return {it["metadata"]["file_name"]: it for it in result.items if "file_name" in it["metadata"]}


def test_every_planted_cut_is_found_within_one_frame(ingested):
    cuts = ingested[0].metrics["cuts"]
    assert cuts["planted"] == 3 * 2 and cuts["videos_compared"] == 3
    assert cuts["matched_within_1_frame"] == cuts["planted"] and cuts["max_frame_error"] <= 1
    assert cuts["missed"] == 0 and cuts["extra"] == 0


def test_each_bad_file_is_quarantined_with_its_reason(ingested):
    result, _ = ingested
    items = _by_name(result)
    for name, reason in synthetic.BAD_FILES.items():
        assert items[name]["quality_scores"]["integrity"] == "quarantined", name
        assert items[name]["annotations"]["quarantine"]["reason"] == reason, name
    m = result.metrics
    assert m["balanced"] and m["files_in"] == sum(m["ok"].values()) + m["quarantined"]["total"]
    assert m["quarantined"]["by_reason"] == {"empty_file": 1, "no_audio": 1, "truncated": 1,
                                             "unreadable_container": 2, "unsupported_type": 1}
    assert m["bad_files"]["mismatches"] == {}


def test_silent_video_passes_when_audio_is_not_required(media, tmp_path):
    root, truth = media
    result = ingest_folder(root, _params(**{"integrity.require_audio": False}), truth, "t", tmp_path)
    item = _by_name(result)["silent ünïcode.mp4"]
    assert item["quality_scores"]["integrity"] == "ok"
    assert item["annotations"]["transcript"]["status"] == "no_audio"


def test_duration_bounds_quarantine(media, tmp_path):
    root, truth = media
    result = ingest_folder(root, _params(**{"integrity.min_duration_s": 10.0}), truth, "t", tmp_path)
    assert _by_name(result)["video_00.mp4"]["annotations"]["quarantine"]["reason"] == "duration_out_of_bounds"


def test_odd_file_names_get_safe_ids(ingested):
    item = _by_name(ingested[0])[ODD_GOOD_NAME]
    assert item["quality_scores"]["integrity"] == "ok"
    assert item["source_path"].endswith(ODD_GOOD_NAME)
    assert item["id"].startswith("video-my-clip-u-mp4-") and " " not in item["id"] and ".." not in item["id"]
    assert item_id("video", "a/../b") != item_id("video", "a..b") and "/" not in item_id("video", "../../x")


def test_static_shots_are_deduplicated_and_counted(ingested, media, tmp_path):
    result, _ = ingested
    frames = result.metrics["frames"]
    assert frames["dropped_duplicate"] > 0 and frames["kept"] == frames["sampled"] - frames["dropped_duplicate"]
    # video_00's third scene is static (static_every=3): one frame of it is kept
    video = _by_name(result)["video_00.mp4"]
    static = video["annotations"]["scenes"][2]
    assert len(static["frame_ids"]) == 1
    root, truth = media
    off = ingest_folder(root, _params(**{"dedup.enabled": False}), truth, "t", tmp_path)
    assert off.metrics["frames"]["dropped_duplicate"] == 0 and off.metrics["frames"]["kept"] == frames["sampled"]


def test_frames_are_sharded_parquet_with_captions(ingested):
    result, out = ingested
    rows = read_frames(out)
    assert len(rows) == len(result.frames) and len(list((out / "frames").glob("shard-*.parquet"))) == 1
    row = rows[0]
    assert row["jpeg"][:2] == b"\xff\xd8" and row["scene_id"] >= 0 and row["caption"].startswith("a ")
    assert {r["caption_backend"] for r in rows} == {"reference"}


def test_keyframes_mode_takes_one_frame_per_scene(media, tmp_path):
    root, truth = media
    result = ingest_folder(root, _params(**{"frames.mode": "keyframes", "dedup.enabled": False}), truth, "t", tmp_path)
    assert [f.timestamp_s for f in result.frames if f.video_id == item_id("video", "video_00.mp4")] == [0.0, 1.0, 2.0]


def test_images_lose_exif_and_gps(ingested, media):
    from PIL import Image

    root, _ = media
    assert Image.open(root / synthetic.PHOTO).getexif().get_ifd(0x8825)  # the source has GPS
    result, _ = ingested
    item = _by_name(result)[synthetic.PHOTO]
    assert item["content_type"] == "image" and item["metadata"]["had_gps"] and item["metadata"]["exif_tags_removed"] > 0
    data = result.files[item["processed_path"]]
    clean = Image.open(io.BytesIO(data))
    assert clean.format == "PNG" and len(clean.getexif()) == 0 and not clean.getexif().get_ifd(0x8825)
    assert b"SparkCam" not in data and clean.size == (64, 64)


def test_audio_files_are_probed(ingested):
    item = _by_name(ingested[0])[synthetic.SPEECH]
    assert item["content_type"] == "audio"
    md = item["metadata"]
    assert (md["duration_s"], md["sample_rate"], md["channels"], md["audio_codec"]) == (2.0, 16000, 1, "pcm_s16le")
    assert item["annotations"]["transcript"]["status"] == "skipped"


def test_manifest_follows_the_schema_and_links_items(ingested):
    result, _ = ingested
    ids = {it["id"] for it in result.items}
    assert len(ids) == len(result.items)
    for it in result.items:
        assert schema_problems(it) == [], it["id"]
    videos = [it for it in result.items if it["content_type"] == "video" and it["quality_scores"]["integrity"] == "ok"]
    for v in videos:
        for scene in v["annotations"]["scenes"]:
            assert {"start_s", "end_s", "frame_ids", "transcript_segment_ids"} <= set(scene)
            assert set(scene["frame_ids"]) <= ids
    frames = [it for it in result.items if it["lineage"]["parent_ids"]]
    assert frames and all(f["lineage"]["parent_ids"][0] in ids for f in frames)


def test_transcription_skipped_reason_without_checkpoint(ingested):
    t = ingested[0].metrics["transcription"]
    assert t["status"] == "skipped" and "transcription.checkpoint" in t["reason"]
    assert "models/external/whisper/" in t["reason"]  # params' words, not this machine's paths
    assert transcription.resolve_checkpoint("none", "").reason == "transcription.backend is none"


@pytest.fixture(scope="module")
def whisper_checkpoint(tmp_path_factory):
    """A randomly initialised Whisper with tiny sizes, saved the way whisper's own
    checkpoints are ({"dims", "model_state_dict"})."""
    from dataclasses import asdict

    import torch
    import whisper

    torch.manual_seed(0)
    dims = whisper.model.ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2,
                                         n_audio_layer=1, n_vocab=51865, n_text_ctx=32, n_text_state=32,
                                         n_text_head=2, n_text_layer=1)
    model = whisper.model.Whisper(dims)
    with torch.no_grad():  # torch.empty in whisper's code: NaN logits unless initialised
        model.decoder.positional_embedding.normal_(0, 0.02)
    # Where params accept it: under models/external/whisper/ of the project (a dvc.yaml dep).
    root = tmp_path_factory.mktemp("whisper")
    path = root / "models/external/whisper/tiny-test.pt"
    path.parent.mkdir(parents=True)
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    return root, path.relative_to(root)


def test_whisper_loads_a_local_checkpoint_and_gives_timestamped_segments(whisper_checkpoint, media, tmp_path,
                                                                        monkeypatch):
    root, _ = media
    folder = tmp_path / "audio_only"
    folder.mkdir()
    shutil.copy(root / synthetic.SPEECH, folder / synthetic.SPEECH)
    project, checkpoint = whisper_checkpoint
    monkeypatch.chdir(project)
    p = _params(**{"source": str(folder), "transcription.checkpoint": str(checkpoint),
                   "transcription.checkpoint_sha256": sha256_file(project / checkpoint)})
    result = ingest_folder(folder, p, None, "t", tmp_path / "out")
    transcript = result.items[0]["annotations"]["transcript"]
    assert result.metrics["transcription"]["status"] == "ok" and result.metrics["transcription"]["backend"] == "whisper"
    assert transcript["status"] == "ok" and transcript["segments"]
    # Whisper's timestamp rules: the first segment starts within the first second, and every
    # segment has a nonzero length (times in seconds, not frames or tokens); greedy decoding
    # of even a random model emits text (here: 0.0-0.12 s, "France France ...").
    assert transcript["segments"][0]["start_s"] <= 1.0
    for seg in transcript["segments"]:
        assert 0.0 <= seg["start_s"] < seg["end_s"] and seg["text"], seg


def test_a_whisper_checkpoint_is_loaded_only_when_its_sha256_matches(whisper_checkpoint):
    project, checkpoint = whisper_checkpoint
    path = project / checkpoint
    with pytest.raises(ModelSourceError, match="its sha256 is [0-9a-f]{64}, but ingest_video.transcription.checkpoint_sha256"):
        transcription.resolve_checkpoint("whisper", str(path), "0" * 64)
    with pytest.raises(ModelSourceError, match="transcription.checkpoint_sha256 is empty"):
        transcription.resolve_checkpoint("whisper", str(path))
    assert transcription.resolve_checkpoint("whisper", str(path), sha256_file(path)).checkpoint == path
    with pytest.raises(ParamsError, match="checkpoint and checkpoint_sha256 go together"):
        _params(**{"transcription.checkpoint": str(checkpoint)})


def test_a_configured_checkpoint_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(ModelSourceError, match=r"transcription\.checkpoint: no Whisper checkpoint at .*nope\.pt"):
        transcription.resolve_checkpoint("whisper", str(tmp_path / "nope.pt"))


def test_stage_writes_identical_outputs_twice(project, media):
    root, _ = media
    params = smoke_params()
    params["ingest_video"].update(source=str(root), ground_truth=str(root / "ground_truth.json"))
    write_params(project / "params.yaml", params)
    env = {**venv_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "SOURCE_DATE_EPOCH": "0"}
    for out in ("a", "b"):
        subprocess.run([sys.executable, str(REPO / "stages/ingest_video.py"), str(root), f"out_{out}",
                        f"m_{out}.json"], check=True, env=env)
    assert (project / "m_a.json").read_bytes() == (project / "m_b.json").read_bytes()
    assert (project / "out_a/manifest.jsonl").read_bytes() == (project / "out_b/manifest.jsonl").read_bytes()
    assert (project / "out_a/frames/shard-00000.parquet").read_bytes() == \
        (project / "out_b/frames/shard-00000.parquet").read_bytes()
    assert str(project) not in (project / "m_a.json").read_text()


@pytest.mark.parametrize("raw_change, message", [
    ({"frames": {"fsp": 2}}, "ingest_video.frames.fsp: unknown key (did you mean 'fps'?)"),
    ({"scenes": {"detector": "magic"}}, "ingest_video.scenes.detector"),
    ({"integrity": {"min_duration_s": 5.0, "max_duration_s": 1.0}}, "min_duration_s must be below max_duration_s"),
    ({"captions": {"backend": "hf", "model": ""}}, "backend 'hf' needs model"),
    ({"ground_truth": ""}, "captions.backend 'reference' needs ground_truth"),
    ({"extensions": {"video": [".mp4", ".ts"]}}, "video lists .ts: no allowed container format"),
    ({"max_pixels": 0}, "ingest_video.max_pixels: Input should be greater than or equal to 1"),
])
def test_params_errors_name_the_key(raw_change, message):
    from tests.conftest import deep_merge

    raw = deep_merge(repo_params()["ingest_video"], raw_change)
    with pytest.raises(ParamsError, match=re.escape(message)):
        validate_section("ingest_video", raw)


REASON_CODE = re.compile(r"[a-z0-9_]+")


def _png_claiming(width, height):
    """A PNG whose header claims width x height, with almost no pixel data behind it."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_concat_scripts_and_playlists_named_mp4_read_nothing_outside_the_folder(media, tmp_path, monkeypatch):
    root, _ = media
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(root / "video_00.mp4", outside / "secret.mp4")
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "link.mp4").symlink_to(outside / "secret.mp4")
    script = "ffconcat version 1.0\nfile link.mp4\nduration 3.0\n"  # on main: 9 frames of secret.mp4 kept
    (folder / "via link.mp4").write_text(script)
    (folder / "direct.mp4").write_text(f"ffconcat version 1.0\nfile ../outside/secret.mp4\nduration 3.0\n"
                                       f"file '{outside}/secret.mp4'\nduration 3.0\n")
    (folder / "playlist.mp4").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:3.0,\n../outside/secret.mp4\n"
                                         "#EXT-X-ENDLIST\n")
    shutil.copy(root / synthetic.SPEECH, folder / "speech as video.mp4")  # a WAV: opened as MP4 only
    shutil.copy(root / synthetic.PHOTO, folder / "photo as png.png")  # a JPEG: opened as PNG only
    params = _params()
    monkeypatch.chdir(folder)  # where a relative name in a script would resolve, too

    result = ingest_folder(folder, params, None, "t", tmp_path / "out")
    items = _by_name(result)
    assert {n: it["annotations"].get("quarantine", {}).get("reason", "ok") for n, it in items.items()} == {
        "link.mp4": "symlink", "via link.mp4": "unreadable_container", "direct.mp4": "unreadable_container",
        "playlist.mp4": "unreadable_container", "speech as video.mp4": "unreadable_container",
        "photo as png.png": "unreadable_image"}
    assert "as mp4 (the container its extension names)" in items["via link.mp4"]["annotations"]["quarantine"]["detail"]
    assert result.frames == [] and result.metrics["frames"]["sampled"] == 0
    assert items["via link.mp4"]["size_bytes"] == len(script)  # the script's bytes, not the video it names
    m = result.metrics
    assert m["files_in"] == 6 and m["quarantined"]["total"] == 6 and m["balanced"]


def test_symlinks_and_fifos_are_quarantined_unopened_and_counted(media, tmp_path):
    root, _ = media
    folder = tmp_path / "media"
    folder.mkdir()
    shutil.copy(root / "video_00.mp4", folder / "real.mp4")
    (folder / "alias.mp4").symlink_to(folder / "real.mp4")
    (folder / "elsewhere").symlink_to(tmp_path)  # a link to a folder is not a folder to ignore
    (folder / "dangling.png").symlink_to(tmp_path / "gone.png")
    os.mkfifo(folder / "pipe.mp4")  # opening it would wait for a writer forever
    (folder / "sub").mkdir()

    result = ingest_folder(folder, _params(), None, "t", tmp_path / "out")
    items = _by_name(result)
    links = {n: it for n, it in items.items() if n != "real.mp4"}
    assert {n: it["annotations"]["quarantine"]["reason"] for n, it in links.items()} == {
        "alias.mp4": "symlink", "elsewhere": "symlink", "dangling.png": "symlink", "pipe.mp4": "not_regular_file"}
    assert items["real.mp4"]["quality_scores"]["integrity"] == "ok"
    assert all(it["metadata"] == {"file_name": n} for n, it in links.items())  # nothing probed through a link
    assert all(str(tmp_path) not in json.dumps(it).replace(str(folder), "") for it in links.values())
    assert all(schema_problems(it) == [] for it in links.values())
    m = result.metrics
    assert (m["files_in"], m["folders_ignored"], m["ok"]["video"], m["quarantined"]["by_reason"]) == (
        5, 1, 1, {"not_regular_file": 1, "symlink": 3})
    assert m["balanced"] and len({f.video_id for f in result.frames}) == 1


def test_files_over_max_pixels_are_quarantined_before_decoding(media, tmp_path):
    root, _ = media
    folder = tmp_path / "media"
    folder.mkdir()
    shutil.copy(root / "video_00.mp4", folder / "clip.mp4")  # 64 x 64
    shutil.copy(root / synthetic.PHOTO, folder / "photo.jpg")  # 64 x 64
    result = ingest_folder(folder, _params(max_pixels=64 * 64 - 1), None, "t", tmp_path / "out")
    items = _by_name(result)
    for name in ("clip.mp4", "photo.jpg"):
        quarantine = items[name]["annotations"]["quarantine"]
        assert quarantine["reason"] == "too_many_pixels", name
        assert "64x64 = 4096 pixels" in quarantine["detail"] and "ingest_video.max_pixels (4095)" in quarantine["detail"]
    assert result.frames == [] and result.files == {}
    at_cap = ingest_folder(folder, _params(max_pixels=64 * 64), None, "t", tmp_path / "out2")
    assert at_cap.metrics["ok"] == {"video": 1, "image": 1, "audio": 0}


def test_stage_goes_on_past_a_decompression_bomb_and_a_name_that_is_not_utf8(media, project):
    root, _ = media
    folder = project / "media"
    folder.mkdir()
    shutil.copy(root / "video_00.mp4", folder / "good.mp4")
    (folder / "bomb.png").write_bytes(_png_claiming(30000, 30000))
    shutil.copy(root / "video_01.mp4", os.fsdecode(os.fsencode(folder) + b"/caf\xe9 clip.mp4"))
    params = smoke_params()
    params["ingest_video"].update(source=str(folder), ground_truth="")
    params["ingest_video"]["captions"]["backend"] = "none"
    write_params(project / "params.yaml", params)
    run = subprocess.run([sys.executable, str(REPO / "stages/ingest_video.py"), str(folder), "out", "m.json"],
                         env={**venv_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"},
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "caf\\xe9 clip.mp4: undecodable_name" in run.stderr
    items = {it["metadata"].get("file_name"): it for it in
             (json.loads(line) for line in (project / "out/manifest.jsonl").read_text(encoding="utf-8").splitlines())}
    odd = items["caf\\xe9 clip.mp4"]
    assert odd["annotations"]["quarantine"]["reason"] == "undecodable_name"
    assert odd["source_path"].endswith("/caf\\xe9 clip.mp4") and schema_problems(odd) == []
    bomb = items["bomb.png"]["annotations"]["quarantine"]
    assert bomb["reason"] == "too_many_pixels" and "decompression bomb" in bomb["detail"]
    assert items["good.mp4"]["quality_scores"]["integrity"] == "ok"
    m = json.loads((project / "m.json").read_text())
    assert m["quarantined"]["by_reason"] == {"too_many_pixels": 1, "undecodable_name": 1}
    assert m["files_in"] == 3 and m["balanced"]
    assert all(REASON_CODE.fullmatch(reason) for reason in m["quarantined"]["by_reason"])
