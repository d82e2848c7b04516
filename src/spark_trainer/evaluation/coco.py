"""COCO caption evaluation through pycocoevalcap's scorers, and COCO detection AP
through pycocotools.

    python stages/evaluate_coco.py models/captioner data/ingest_video data/train_captioner/split.json \
        data/evaluate_coco metrics/evaluate_coco.json

References and predictions are written in the COCO caption format (an annotations JSON
with `images` and `annotations`, a results JSON `[{"image_id", "caption"}]`) and scored
with pycocoevalcap's BLEU-1..4, ROUGE-L and CIDEr-D (its `Cider` scorer is CIDEr-D:
clipped n-gram counts and a length penalty), METEOR when Java is installed and SPICE
when its Stanford CoreNLP jars are. The scorers are called one by one, as
`COCOEvalCap.evaluate()` fails outright when SPICE cannot run.

Tokenization: pycocoevalcap's PTBTokenizer (Stanford CoreNLP, needs Java), or without
Java `python_tokenize`: lower-case, split off punctuation, PTB's contractions and
possessives, brackets as -lrb- / -rrb- (what PTBTokenizer leaves after lower-casing),
drop the punctuation tokens PTBTokenizer drops. It matches PTBTokenizer on the test's
sentences (tests/test_evaluate_coco.py); PTB's quote heuristics on apostrophes
after a contraction ("I'm ... we'll") are not reproduced. Both sides (references and
predictions) always go through the same tokenizer.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from collections import Counter
from pathlib import Path

# What pycocoevalcap's PTBTokenizer removes after tokenizing (its PUNCTUATIONS list).
PTB_PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                    "...", ";"}
# PTBTokenizer writes brackets as -LRB- ... and, lower-casing, keeps them (its list has upper case only);
# double quotes become `` / '' and are dropped; "cannot" is split in two.
_BRACKETS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- ", '"': " "}
_BRACKETS_TABLE = str.maketrans(_BRACKETS)
_TOKEN = re.compile(r"-[lr][rsc]b-|n't\b|'(?:s|re|ve|ll|d|m)\b|\.\.\.|--|\w+(?:[-/.]\w+)*(?=n't\b)"
                    r"|\w+(?:[-/.]\w+)*|[^\w\s]")
_CANNOT = re.compile(r"\bcannot\b")


def java_available() -> bool:
    return shutil.which("java") is not None


def python_tokenize(caption: str) -> str:
    """PTB-style tokens of one caption, punctuation removed, joined by spaces."""
    text = _CANNOT.sub("can not", caption.replace("\n", " ").lower().translate(_BRACKETS_TABLE))
    return " ".join(t for t in _TOKEN.findall(text) if t not in PTB_PUNCTUATIONS)


def tokenize(captions: dict[int, list[str]], tokenizer: str) -> dict[int, list[str]]:
    """{image_id: [caption, ...]} -> the same with tokenized captions."""
    if tokenizer == "ptb":
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {k: [python_tokenize(c) for c in v] for k, v in captions.items()}


def tokenize_many(parts: list[dict[int, list[str]]], tokenizer: str) -> list[dict[int, list[str]]]:
    """`tokenize` on several dicts in one call: PTBTokenizer starts a JVM per call."""
    merged = {(n, k): v for n, part in enumerate(parts) for k, v in part.items()}
    done = tokenize(merged, tokenizer)
    return [{k: done[(n, k)] for k in part} for n, part in enumerate(parts)]


def resolve_tokenizer(choice: str) -> str:
    if choice == "auto":
        return "ptb" if java_available() else "python"
    if choice == "ptb" and not java_available():
        from spark_trainer.errors import ParamsError

        raise ParamsError("evaluate_coco.tokenizer: ptb needs Java (`java` on PATH); use auto or python")
    return choice


def spice_resources() -> tuple[bool, str]:
    """SPICE needs Stanford CoreNLP 3.6.0 jars next to spice-1.0.jar (downloaded by
    pycocoevalcap's get_stanford_models on first use, which fails offline)."""
    import pycocoevalcap.spice.spice as spice_module

    lib = Path(spice_module.__file__).parent / "lib"
    needed = ["stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"]
    missing = [n for n in needed if not (lib / n).is_file()]
    if not java_available():
        return False, "Java is not installed"
    if missing:
        return False, f"SPICE's Stanford CoreNLP jars are not installed ({', '.join(missing)} in pycocoevalcap/spice/lib)"
    return True, ""


def caption_scores(gts: dict[int, list[str]], res: dict[int, list[str]], meteor=None, spice: bool = False) -> dict:
    """pycocoevalcap's scorers on tokenized captions: {BLEU-1..4, ROUGE-L, CIDEr-D[, METEOR, SPICE]}."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its internals
        bleu, _ = Bleu(4).compute_score(gts, res)
    scores = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr-D"] = float(Cider().compute_score(gts, res)[0])
    if meteor is not None:
        scores["METEOR"] = float(meteor.compute_score(gts, res)[0])
    if spice:
        from pycocoevalcap.spice.spice import Spice

        scores["SPICE"] = float(Spice().compute_score(gts, res)[0])
    return scores


def coco_caption_files(frame_ids: list[str], references: dict[str, list[str]], predictions: dict[str, str]) -> tuple[dict, list]:
    """(annotations JSON, results JSON) in the COCO caption format; image ids follow
    the order of `frame_ids`, and each image's `file_name` is its frame id."""
    images = [{"id": i, "file_name": fid} for i, fid in enumerate(frame_ids)]
    annotations = [{"id": n, "image_id": i, "caption": c}
                   for n, (i, c) in enumerate((i, c) for i, fid in enumerate(frame_ids) for c in references[fid])]
    results = [{"image_id": i, "caption": predictions[fid]} for i, fid in enumerate(frame_ids)]
    return ({"info": {"description": "held-out frames"}, "licenses": [], "type": "captions", "images": images,
             "annotations": annotations}, results)


def gts_res(annotations: dict, results: list) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """The scorers' input dicts from the two COCO files (as COCOEvalCap builds them)."""
    gts: dict[int, list[str]] = {img["id"]: [] for img in annotations["images"]}
    for a in annotations["annotations"]:
        gts[a["image_id"]].append(a["caption"])
    res = {r["image_id"]: [r["caption"]] for r in results}
    return gts, res


def constant_caption(train_captions: list[str]) -> str:
    """The most frequent training caption (ties: the alphabetically first): what a
    captioner that ignores the image would say."""
    counts = Counter(train_captions)
    return min(counts, key=lambda c: (-counts[c], c))


def detection_scores(annotations_path: str, results_path: str, iou_types: tuple[str, ...]) -> dict:
    """mAP (IoU .50:.95), AP50 and AP75 per IoU type through pycocotools' COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        gt = COCO(annotations_path)
        dt = gt.loadRes(results_path)
        for iou_type in iou_types:
            if iou_type == "segm" and not any("segmentation" in a for a in dt.dataset["annotations"]):
                out[iou_type] = {"status": "skipped", "reason": "the results carry no segmentation"}
                continue
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[iou_type] = {"mAP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2])}
    return out
