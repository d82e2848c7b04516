"""evaluate_coco: COCO caption files, scores identical to pycocoevalcap's scorers called
directly, the python tokenizer against PTBTokenizer, pycocotools bbox/segm AP."""

import json
import subprocess
import sys

import pytest

from spark_trainer.errors import ParamsError
from spark_trainer.evaluation import coco
from spark_trainer.modeling import captioner
from spark_trainer.params import validate_section
from spark_trainer.video.frames import write_shards
from tests.conftest import REPO, deep_merge, repo_params, smoke_params, venv_env, write_params
from tests.test_captioner import make_frames

needs_java = pytest.mark.skipif(not coco.java_available(), reason="PTBTokenizer and METEOR need Java")


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    """The stage on frames and an (untrained) captioner built here, with the repo's
    default evaluate_coco params: PTBTokenizer and METEOR when Java is installed."""
    root = tmp_path_factory.mktemp("coco")
    frames = make_frames(per_scene=3)
    write_shards(frames, root / "frames_dir", shard_size=50)
    tok = captioner.build_tokenizer([f.caption for f in frames])
    p = validate_section("train_captioner", repo_params()["train_captioner"])
    model = captioner.build_model(tok, p.image_size, p.encoder, p.decoder, p.block_size, seed=0)
    captioner.save(root / "model", model, tok, captioner.build_image_processor(p.image_size))
    held = [f.frame_id for f in frames if f.index % 3 == 2]
    (root / "split.json").write_text(json.dumps({"holdout": "time", "train": [f.frame_id for f in frames
                                                                             if f.frame_id not in held],
                                                 "heldout": held}))
    params = smoke_params()
    params["evaluate_coco"] = {**repo_params()["evaluate_coco"], "model": "model"}  # a dep: it must exist
    write_params(root / "params.yaml", params)
    env = {**venv_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    subprocess.run([sys.executable, str(REPO / "stages/evaluate_coco.py"), "model", "frames_dir", "split.json", "out",
                    "metrics.json"], cwd=root, env=env, check=True)
    return root, json.loads((root / "metrics.json").read_text())


def test_writes_coco_caption_files(stage_run):
    root, metrics = stage_run
    ann = json.loads((root / "out/captions_references.json").read_text())
    res = json.loads((root / "out/captions_results.json").read_text())
    assert ann["type"] == "captions" and len(ann["images"]) == metrics["images"] == 8 == len(res)
    assert {a["image_id"] for a in ann["annotations"]} == {img["id"] for img in ann["images"]} == \
        {r["image_id"] for r in res}
    base = json.loads((root / "out/captions_baseline_results.json").read_text())
    assert {r["caption"] for r in base} == {metrics["constant_baseline"]["caption"]}


def test_scores_equal_pycocoevalcap_scorers_called_directly(stage_run):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    root, metrics = stage_run
    ann = json.loads((root / "out/captions_references.json").read_text())
    for results_file, key in (("captions_results.json", "model"), ("captions_baseline_results.json",
                                                                    "constant_baseline")):
        res_list = json.loads((root / "out" / results_file).read_text())
        gts = {img["id"]: [] for img in ann["images"]}
        for a in ann["annotations"]:
            gts[a["image_id"]].append({"caption": a["caption"]})
        res = {r["image_id"]: [{"caption": r["caption"]}] for r in res_list}
        if metrics["tokenizer"] == "ptb":
            from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

            gts, res = PTBTokenizer().tokenize(gts), PTBTokenizer().tokenize(res)
        else:
            gts = {k: [coco.python_tokenize(c["caption"]) for c in v] for k, v in gts.items()}
            res = {k: [coco.python_tokenize(c["caption"]) for c in v] for k, v in res.items()}
        bleu, _ = Bleu(4).compute_score(gts, res)
        expected = {f"BLEU-{n + 1}": b for n, b in enumerate(bleu)}
        expected["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
        expected["CIDEr-D"] = Cider().compute_score(gts, res)[0]
        if metrics["meteor"] == "ok":
            from pycocoevalcap.meteor.meteor import Meteor

            expected["METEOR"] = Meteor().compute_score(gts, res)[0]
        got = {k: v for k, v in metrics[key].items() if k != "caption"}
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert got[name] == round(float(value), 6), (key, name)
    assert metrics["tokenizer"] == ("ptb" if coco.java_available() else "python")


def test_untrained_captioner_does_not_beat_the_baseline(stage_run):
    _, metrics = stage_run
    assert metrics["model"]["CIDEr-D"] < metrics["constant_baseline"]["CIDEr-D"]
    assert metrics["cider_d_over_baseline"] < 0 and metrics["detection"]["status"] == "skipped"
    spice_on, spice_reason = coco.spice_resources()  # "ok", or why not: no Java, or no CoreNLP jars
    assert metrics["spice"] == ("ok" if spice_on else spice_reason)


SENTENCES = ["A man, riding a horse.", "Two dogs (brown) play in the snow!", "It's the cat's toy; isn't it?",
             "A RED circle on a white background", "People wait... at the bus-stop: 3 of them",
             "A \"quoted\" sign", "  extra   spaces\there ", "a [box] {set} 3.5 km/h e-mail cannot don't"]


@needs_java
def test_python_tokenizer_matches_ptb_tokenizer():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ptb = PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(SENTENCES)})
    for i, s in enumerate(SENTENCES):
        assert coco.python_tokenize(s) == ptb[i][0], s


def test_python_tokenizer_rules():
    assert coco.python_tokenize("A Dog's toy, isn't it?") == "a dog 's toy is n't it"
    assert coco.python_tokenize("(Left) bus-stop...") == "-lrb- left -rrb- bus-stop"


def test_constant_caption_is_the_most_frequent_training_caption():
    assert coco.constant_caption(["b", "a", "b", "a", "c"]) == "a"
    assert coco.constant_caption(["x", "y", "y"]) == "y"


def _detection_files(tmp_path, shift: float):
    square = [[10, 10, 30, 10, 30, 30, 10, 30]]
    gt = {"images": [{"id": 1, "width": 64, "height": 64}, {"id": 2, "width": 64, "height": 64}],
          "categories": [{"id": 1, "name": "square"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0, "segmentation": square},
                          {"id": 2, "image_id": 2, "category_id": 1, "bbox": [20, 20, 20, 20], "area": 400,
                           "iscrowd": 0, "segmentation": [[20, 20, 40, 20, 40, 40, 20, 40]]}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9, "segmentation": square},
            {"image_id": 2, "category_id": 1, "bbox": [20 + shift, 20, 20, 20], "score": 0.8,
             "segmentation": [[20 + shift, 20, 40 + shift, 20, 40 + shift, 40, 20 + shift, 40]]}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    return str(tmp_path / "gt.json"), str(tmp_path / "dt.json")


def test_pycocotools_bbox_and_segm_ap(tmp_path):
    perfect = coco.detection_scores(*_detection_files(tmp_path, 0.0), ("bbox", "segm"))
    assert perfect["bbox"] == {"mAP": 1.0, "AP50": 1.0, "AP75": 1.0} and perfect["segm"]["mAP"] == 1.0
    # the second box shifted by 5 px: IoU 15*20 / (2*400 - 300) = 0.6 -> a hit at .50, a miss at .75
    shifted = coco.detection_scores(*_detection_files(tmp_path, 5.0), ("bbox",))
    assert shifted["bbox"]["AP50"] == 1.0 and shifted["bbox"]["AP75"] < 1.0 and shifted["bbox"]["mAP"] < 1.0


def test_detection_params_go_in_pairs():
    raw = deep_merge(repo_params()["evaluate_coco"], {"detection": {"annotations": "gt.json"}})
    with pytest.raises(ParamsError, match="set both or neither"):
        validate_section("evaluate_coco", raw)
