"""Throughput (docs/s) of each quality gate at two corpus sizes, and how its time scales.

    .venv/bin/python benchmarks/quality_gates_throughput.py --sizes 10000 100000

Documents are generated deterministically (seeded `random.Random`) from the texts of the
sample corpus (`spark_trainer.data.sample.generate` with the `sample` params): each is two
sample texts joined, with numbers redrawn, about one word in six swapped for another
corpus word and a numbered prefix, so nearly all are distinct. Into them go ~2% exact
duplicates, ~2% near duplicates (one word inserted into a document of 20+ words), ~1% with
a PII line and ~1% with a toxic line (the sample's planted ones), split 80/10/10 into
train/val/test manifest items.

Each gate function of `spark_trainer.quality.gates` (screen, exact_dedup, near_dedup, pii,
toxicity on the wordlist backend: Detoxify weights are not available offline) runs on its
own fresh deep copy of the documents, copied outside the timed region; only the gate call
is timed (time.perf_counter). A warm-up pass over ~200 documents first pays the one-off
costs (imports, py3langid's model). The Presidio engine and the toxicity scorer are built
once, untimed (their build time is reported apart), and handed to the gate in place of its
own build, so docs/s measures the per-document work. Targets: exact and near dedup at
>= 5,000 docs/s at every size, and time(largest) / time(smallest) <= 1.2 x the size ratio
(10x the documents costs <= 12x the time) for every gate.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import random
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

from spark_trainer.data import sample
from spark_trainer.data.manifest import text_item
from spark_trainer.params import QualityGatesParams, load_section
from spark_trainer.quality import gates, pii, toxicity

GATE_NAMES = ("screen", "exact_dedup", "near_dedup", "pii", "toxicity")
DEDUP_GATES = ("exact_dedup", "near_dedup")
DEDUP_MIN_DOCS_PER_S = 5000
SCALING_SLACK = 1.2          # 10x the documents may cost up to 12x the time
EXACT_FRACTION, NEAR_FRACTION, PII_FRACTION, TOXIC_FRACTION = 0.02, 0.02, 0.01, 0.01
NEAR_MIN_WORDS = 20
CREATED_AT = "2024-01-01T00:00:00+00:00"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000], help="documents per timed run")
    parser.add_argument("--warmup", type=int, default=200, help="documents in the untimed warm-up run")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per gate and size (median kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality_gates_throughput.json"))
    return parser.parse_args()


# ------------------------------------------------------------------ documents


def sample_texts(params_path: Path) -> tuple[list[str], list[str], list[str]]:
    """(clean texts, planted PII lines, planted toxic lines) of the sample corpus."""
    s = load_section("sample", params_path)
    data = sample.generate(s.seed, s.subjects, s.qa_per_subject, s.world_towns, s.fact_phrasings,
                           s.passages_per_subject, s.mmlu_dev_per_subject, s.mmlu_test_per_subject,
                           s.planted.model_dump())
    problems = {label["id"]: label["problems"] for label in data.labels}
    clean = [d["text"] for d in data.corpus if d["id"] not in problems]
    with_pii = [d["text"] for d in data.corpus if "pii" in problems.get(d["id"], [])]
    toxic = [d["text"] for d in data.corpus if "toxic" in problems.get(d["id"], [])]
    return clean, with_pii, toxic


def vocabulary(texts: list[str]) -> list[str]:
    return sorted({w for t in texts for w in re.findall(r"[A-Za-z]{3,}", t)})


def distinct_text(i: int, clean: list[str], vocab: list[str], rng: random.Random) -> str:
    # Swapped words break enough 3-word shingles that two documents built from the same
    # sample texts stay below the near-dedup threshold: duplicates are only the planted ones.
    text = re.sub(r"\d+", lambda _: str(rng.randint(0, 999)), f"{rng.choice(clean)} {rng.choice(clean)}")
    words = text.split(" ")
    for k in rng.sample(range(len(words)), len(words) // 6):
        words[k] = rng.choice(vocab)
    return f"{i}. " + " ".join(words)


def insert_word(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    pos = rng.randint(2, len(words) - 2)
    return " ".join(words[:pos] + [rng.choice(["indeed", "also", "then", "still"])] + words[pos:])


def documents(n: int, seed: int, clean: list[str], with_pii: list[str], toxic: list[str]) -> list[str]:
    """n texts: distinct ones plus planted exact/near duplicates, PII and toxic lines, shuffled."""
    rng = random.Random(seed)
    vocab = vocabulary(clean)
    n_exact, n_near = round(n * EXACT_FRACTION), round(n * NEAR_FRACTION)
    n_pii, n_toxic = round(n * PII_FRACTION), round(n * TOXIC_FRACTION)
    texts = [distinct_text(i, clean, vocab, rng) for i in range(n - n_exact - n_near)]
    for k in range(n_pii):
        texts[k] += " " + rng.choice(with_pii)
    for k in range(n_pii, n_pii + n_toxic):
        texts[k] += " " + rng.choice(toxic)
    # Duplicate sources exclude the PII/toxic documents, so each problem is counted once.
    plain = texts[n_pii + n_toxic:]
    exact = [rng.choice([t, t.upper(), t + "  "]) for t in rng.sample(plain, n_exact)]
    long_enough = [t for t in plain if len(t.split()) >= NEAR_MIN_WORDS]
    near = [insert_word(t, rng) for t in rng.sample(long_enough, n_near)]
    texts += exact + near
    rng.shuffle(texts)
    return texts


def as_splits(texts: list[str], tag: str) -> dict[str, list[dict]]:
    """80/10/10 train/val/test manifest items with unique ids."""
    n_train, n_val = int(len(texts) * 0.8), int(len(texts) * 0.1)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(texts))}
    splits = {}
    for split, (lo, hi) in bounds.items():
        splits[split] = [
            text_item(f"bench-{tag}-{i:07d}", texts[i], "benchmark", "benchmark", f"data/prepared/{split}.jsonl",
                      CREATED_AT, {"source": "benchmark", "parent_ids": [], "stage": "prepare"})
            for i in range(lo, hi)]
    return splits


# ------------------------------------------------------------------ timing


def prebuilt(p: QualityGatesParams) -> tuple[dict[str, object], dict[str, float]]:
    """The one-off objects the PII and toxicity gates build, built once, with build seconds."""
    g, t = p.pii, p.toxicity
    start = time.perf_counter()
    engine = pii.build_engine(g.spacy_model, g.phone_regions)
    mid = time.perf_counter()
    scorer = toxicity.build_scorer(t.backend, t.model_type, t.checkpoint, t.huggingface_config_path, t.fallback,
                                   t.batch_size, t.checkpoint_sha256)
    end = time.perf_counter()
    return {"pii": engine, "toxicity": scorer}, {"pii_engine_build": mid - start, "toxicity_scorer_build": end - mid}


def reuse(name: str, built: dict[str, object]):
    """Hand the gate the prebuilt engine/scorer instead of letting it build its own."""
    if name == "pii":
        return mock.patch.object(pii, "build_engine", lambda *_: built["pii"])
    if name == "toxicity":
        return mock.patch.object(toxicity, "build_scorer", lambda *_: built["toxicity"])
    return contextlib.nullcontext()


def time_gate(name: str, splits: dict[str, list[dict]], p: QualityGatesParams,
              built: dict[str, object]) -> tuple[float, dict]:
    """Seconds of one gate call on a fresh copy of `splits`, and what it found."""
    outcome = gates.GatesOutcome(copy.deepcopy(splits), [], {})
    gc.collect()  # garbage left by the copy is not the gate's to collect
    with reuse(name, built):
        start = time.perf_counter()
        verdicts, details = gates.GATES[name](outcome, p)
        seconds = time.perf_counter() - start
    return seconds, {"rejected": len(verdicts), "details": details}


def measure(sizes: list[int], repeats: int, seed: int, corpus: tuple, p: QualityGatesParams,
            built: dict[str, object]) -> dict[str, dict[int, dict]]:
    results: dict[str, dict[int, dict]] = {name: {} for name in GATE_NAMES}
    for n in sizes:
        splits = as_splits(documents(n, seed + n, *corpus), str(n))
        for name in GATE_NAMES:
            runs = [time_gate(name, splits, p, built) for _ in range(repeats)]
            seconds = statistics.median(s for s, _ in runs)
            results[name][n] = {"seconds": round(seconds, 4), "docs_per_s": round(n / seconds, 1), **runs[0][1]}
            print(f"  {name:<12} {n:>7} docs  {seconds:8.2f} s  {n / seconds:>10.0f} docs/s", flush=True)
    return results


# ------------------------------------------------------------------ report


def summarise(args: argparse.Namespace, results: dict, setup: dict[str, float], p: QualityGatesParams,
              wall: float) -> dict:
    small, large = min(args.sizes), max(args.sizes)
    limit = SCALING_SLACK * large / small
    scaling = {name: round(r[large]["seconds"] / r[small]["seconds"], 3) for name, r in results.items()}
    dedup_ok = {name: all(r["docs_per_s"] >= DEDUP_MIN_DOCS_PER_S for r in results[name].values())
                for name in DEDUP_GATES}
    scaling_ok = {name: ratio <= limit for name, ratio in scaling.items()}
    return {
        "sizes": args.sizes,
        "repeats": args.repeats,
        "seed": args.seed,
        "planted_fractions": {"exact_duplicates": EXACT_FRACTION, "near_duplicates": NEAR_FRACTION,
                              "pii": PII_FRACTION, "toxic": TOXIC_FRACTION},
        "toxicity_backend": p.toxicity.backend,
        "gates": {name: {str(n): r for n, r in per_size.items()} for name, per_size in results.items()},
        "one_off_seconds": {k: round(v, 3) for k, v in setup.items()},
        "scaling": {"sizes": [small, large], "size_ratio": large / small, "time_ratio": scaling,
                    "limit": round(limit, 3)},
        "targets": {
            "dedup_min_docs_per_s": DEDUP_MIN_DOCS_PER_S, "dedup_met": dedup_ok,
            "scaling_met": scaling_ok,
            "all_met": all(dedup_ok.values()) and all(scaling_ok.values()),
        },
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "wall_seconds": round(wall, 1),
        "command": shlex.join([sys.executable, *sys.argv]),
    }


def print_table(results: dict, report: dict) -> None:
    ratios, limit = report["scaling"]["time_ratio"], report["scaling"]["limit"]
    print(f"\n{'gate':<12} {'size':>7} {'seconds':>9} {'docs/s':>10} {'scaling':>8}")
    for name, per_size in results.items():
        for n, r in per_size.items():
            ratio = f"{ratios[name]:.2f}" if n == max(per_size) else ""
            print(f"{name:<12} {n:>7} {r['seconds']:>9.3f} {r['docs_per_s']:>10.0f} {ratio:>8}")
    t = report["targets"]
    print(f"\ndedup >= {t['dedup_min_docs_per_s']} docs/s: {t['dedup_met']}")
    print(f"scaling <= {limit:.1f}x: {t['scaling_met']}")
    print(f"one-off (untimed): {report['one_off_seconds']}; run took {report['wall_seconds']:.0f} s\n")


def main() -> None:
    args = parse_args()
    if len(set(args.sizes)) < 2:
        raise SystemExit("--sizes needs at least two different sizes to measure scaling")
    started = time.perf_counter()
    base = load_section("quality_gates", args.params)
    # Detoxify weights are not available offline; the word list is what runs here.
    p = base.model_copy(update={"toxicity": base.toxicity.model_copy(update={"backend": "wordlist"})})
    corpus = sample_texts(args.params)
    built, setup = prebuilt(p)
    print(f"warm-up on {args.warmup} documents", flush=True)
    measure([args.warmup], 1, args.seed, corpus, p, built)
    print("timed runs", flush=True)
    args.sizes = sorted(set(args.sizes))
    results = measure(args.sizes, args.repeats, args.seed, corpus, p, built)
    report = summarise(args, results, setup, p, time.perf_counter() - started)
    print_table(results, report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
