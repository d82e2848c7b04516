"""Run lm-evaluation-harness on a local MMLU-format folder, to compare with our scorer.

The task configs are lm-eval's own MMLU templates (`tasks/mmlu/default` and
`tasks/mmlu/continuation`), pointed at JSON copies of the local CSVs in the `cais/mmlu`
layout (question, choices, answer index). lm-eval is a test dependency.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spark_trainer.evaluation.mmlu import load_local

_COMMON = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files: {{dev: {dev}, test: {test}}}
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
output_type: multiple_choice
"""
TEMPLATES = {
    "letter": _COMMON + """description: "The following are multiple choice questions (with answers) about {name}.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
""",
    "continuation": _COMMON + """description: "The following are questions (with answers) about {name}.\\n\\n"
doc_to_text: "Question: {{{{question.strip()}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""",
}


def write_tasks(mmlu_dir: Path, out_dir: Path, fmt: str) -> dict[str, str]:
    """lm-eval task files for every subject of `mmlu_dir`; returns {subject: task name}."""
    dev, test = load_local(mmlu_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = {}
    for subject in sorted(test):
        files = {}
        for split, questions in (("dev", dev[subject]), ("test", test[subject])):
            files[split] = out_dir / f"{subject}_{split}.jsonl"
            files[split].write_text("".join(json.dumps({"question": q.question, "choices": list(q.choices),
                                                        "answer": q.answer}) + "\n" for q in questions))
        task = f"spark_{fmt}_{subject}"
        (out_dir / f"{task}.yaml").write_text(TEMPLATES[fmt].format(
            task=task, dev=files["dev"], test=files["test"], name=subject.replace("_", " ")))
        tasks[subject] = task
    return tasks


def run(model_dir: Path, mmlu_dir: Path, work_dir: Path, fmt: str, k: int,
        batch_size: int, dtype: str = "float32", device="cpu") -> dict[tuple[str, int], list[float]]:
    """lm-eval's per-question log-likelihoods: {(subject, question index): [ll_A, .., ll_D]},
    with the model loaded in `dtype` on `device` (HFLM's own options)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = write_tasks(mmlu_dir, work_dir / f"tasks_{fmt}", fmt)
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype={dtype}",
                                  tasks=list(tasks.values()), num_fewshot=k, batch_size=batch_size,
                                  log_samples=True, device=str(device),
                                  task_manager=TaskManager(include_path=str(work_dir / f"tasks_{fmt}")))
    result: dict[tuple[str, int], list[float]] = {}
    for subject, task in tasks.items():
        for sample in out["samples"][task]:
            result[(subject, sample["doc_id"])] = [float(r[0]) for r in sample["filtered_resps"]]
    return result


def predictions_match(ours: list[dict[str, Any]], theirs: dict[tuple[str, int], list[float]]) -> list[tuple]:
    """The questions where our prediction differs from lm-eval's (empty: identical)."""
    by_key = {(r["subject"], r["index"]): r for r in ours}
    differ = []
    for key, lls in theirs.items():
        if key not in by_key or by_key[key]["prediction"] != max(range(4), key=lambda i: (lls[i], -i)):
            differ.append(key)
    return differ + [key for key in by_key if key not in theirs]
