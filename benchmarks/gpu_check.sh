#!/usr/bin/env bash
# The GPU check: the real-model profile (SmolLM2-135M-Instruct, configs/profiles/smollm2.yaml) on
# CUDA at smoke step counts, and training throughput with MFU, on a machine with an NVIDIA GPU.
#
#   bash benchmarks/gpu_check.sh                 # results under benchmarks/results/gpu_check/
#   OUT=/some/dir bash benchmarks/gpu_check.sh   # results under $OUT
#
# It fails at once, saying why, when the machine has no NVIDIA driver, NVML lists no GPU or torch
# sees no CUDA device. It picks one GPU with spark_trainer.gpus (the most free memory, within a
# CUDA_VISIBLE_DEVICES you set), copies the working tree (tracked and untracked, not ignored
# files) into a temporary git repository and runs there, each check a DVC experiment in that
# copy's workspace (params.yaml reset to the copy's first, so no check inherits another's keys):
#   lora_bf16     LoRA in bf16 on lora@arithmetic; MMLU of the base and of the adapter
#   quantize_nf4  quantize.method=bnb_nf4 on the merged adapter model; MMLU of it
#   distill       a 10-layer student of the merged model; MMLU of it
#   full_ft       full fine-tuning: train.max_steps > 0 on the imported model; MMLU of it
#   qlora         lora.qlora=true: LoRA on an NF4 base (bitsandbytes)
#   zero2         full_ft's training through accelerate + DeepSpeed ZeRO-2 on one GPU
#   throughput    benchmarks/gpu_throughput.py on the imported model: bf16 with MFU, then fp32
# A failing check is logged (logs/<check>.log, its tail printed) and the others still run; the
# summary table lists every check, and the script exits 1 if any failed.
#
# Settings (environment):
#   PYTHON   the environment's python (default .venv/bin/python, else python3); torch must be a CUDA build
#   STEPS    training steps of each check (default 30)
#   CHECKS   the checks to run, space-separated (default: all, in the order above)
#   EXTRA    more overrides for every experiment, e.g. EXTRA="-S evaluate_mmlu.num_fewshot=1"
#   MODEL    the folder gpu_throughput.py trains (default: the copy's models/imported)
#   KEEP=1   keep the temporary copy
#   DEVICE=cpu  the same plumbing on the CPU (GPUs hidden), to try the script itself (slow: pair it
#            with small STEPS, CHECKS and EXTRA; quantize_nf4, qlora and zero2 need CUDA)
# About 12 minutes on an H200, mostly process start-up and imports (results/gpu_check-h200/README.md).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[[ -x "$PY" ]] || PY="$(command -v python3)"
OUT="${OUT:-$REPO/benchmarks/results/gpu_check}"
STEPS="${STEPS:-30}"
DEVICE="${DEVICE:-cuda}"
SLOW=1; [[ "$DEVICE" == cuda ]] || SLOW=10  # the time limits are a GPU's; a CPU gets ten times as long
CHECKS="${CHECKS:-lora_bf16 quantize_nf4 distill full_ft qlora zero2 throughput}"
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
COPY="$WORK/repo"
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
: > "$OUT/checks.jsonl"

cleanup() { if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $COPY"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
die() { echo "gpu_check: $*" >&2; exit 1; }

# ------------------------------------------------------------------ is there a GPU to check?
gpu_preflight() {
    command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this machine has no NVIDIA driver, so no GPU to check"
    nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,utilization.gpu,mig.mode.current \
        --format=csv || die "nvidia-smi failed: the driver cannot reach the GPU"
    (cd "$REPO" && "$PY" scripts/gpus.py) || die "scripts/gpus.py failed"
    CUDA_VISIBLE_DEVICES="$(cd "$REPO" && "$PY" -c 'import sys
from spark_trainer import gpus
choice = gpus.choose(1)
print(choice.reason, file=sys.stderr)
print(choice.visible_devices or "")')" || die "no GPU could be chosen (above)"
    [[ -n "$CUDA_VISIBLE_DEVICES" ]] || die "NVML lists no usable GPU (above)"
    export CUDA_VISIBLE_DEVICES CUDA_DEVICE_ORDER=PCI_BUS_ID  # NVML's index, in NVML's order (spark_trainer.gpus)
    echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES CUDA_DEVICE_ORDER=$CUDA_DEVICE_ORDER"
}

# compute.device stays auto in every check (see COMMON), so a CPU run hides the GPUs instead
if [[ "$DEVICE" == cuda ]]; then gpu_preflight; else export CUDA_VISIBLE_DEVICES=""; fi
"$PY" - "$DEVICE" > "$OUT/torch.json" <<'PYTHON' || die "torch cannot use the $DEVICE device (above)"
import json, sys
import torch
if sys.argv[1] == "cpu":
    print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "device": "cpu"}))
    sys.exit()
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda or 'none, a CPU wheel'}); "
             "install a CUDA build of torch in the environment")
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0),
                  "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
                  "bf16": torch.cuda.is_bf16_supported(), "devices": torch.cuda.device_count()}))
PYTHON
cat "$OUT/torch.json"

# ------------------------------------------------------------------ a throwaway copy of the working tree
mkdir -p "$COPY"
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    # --cached lists files deleted from the working tree too: tar skips them
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$COPY"
else
    tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude=./.dvc/cache --exclude=./.dvc/tmp -cf - . \
        | tar -xf - -C "$COPY"
fi
export GIT_AUTHOR_NAME=gpu-check GIT_AUTHOR_EMAIL=gpu-check@localhost
export GIT_COMMITTER_NAME=gpu-check GIT_COMMITTER_EMAIL=gpu-check@localhost
git -C "$COPY" init -q && git -C "$COPY" add -A && git -C "$COPY" commit -qm "gpu check: working tree"
# dvc runs each stage's `python` through the shell: the environment's must come first; nothing goes online
PATH="$(dirname "$PY"):$PATH"
export PATH DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
# the data stages' outputs as dvc.lock records them, from the checkout's DVC cache when it holds them: those
# stages are then up to date in the copy and are not run again (the copy keeps a cache of its own)
if [[ -d "$REPO/.dvc/cache" ]]; then
    (cd "$COPY" && dvc remote add -q --local checkout "$REPO/.dvc/cache" \
        && dvc pull -q -r checkout --allow-missing sample prepare quality_gates) \
        || echo "gpu_check: the data stages' outputs are not in $REPO/.dvc/cache: the checks run those stages too"
fi
# the same LoRA settings in every experiment, so later ones reuse lora@arithmetic's outputs
# compute.device stays auto (CUDA when torch sees it): a changed value would make the data stages, whose
# outputs were pulled above, run again
COMMON=(-S "lora.max_steps=$STEPS" -S "lora.save_steps=$STEPS" -S lora.logging_steps=5
        -S "quantize.compare=[]" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
TRAIN=(-S "train.max_steps=$STEPS" -S "train.save_steps=$STEPS" -S train.logging_steps=5 -S train.warmup_steps=3)

# check NAME CMD...: runs CMD in the copy with its output in logs/NAME.log; records status, seconds and figures
check() {
    local name=$1 rc=0 start=$SECONDS
    shift
    echo "== $name: $*"
    (cd "$COPY" && "$@") > "$OUT/logs/$name.log" 2>&1 || rc=$?
    if ((rc != 0)); then
        echo "-- $name: exit $rc; the end of logs/$name.log:"
        tail -n 25 "$OUT/logs/$name.log"
    fi
    "$PY" "$WORK/summary.py" record "$name" "$rc" $((SECONDS - start))
}

# exp NAME LIMIT_S [-S key=value ...] [stages ...]: one smollm2-profile experiment, params.yaml reset first
exp() {
    local name=$1 limit=$2
    shift 2
    git show HEAD:params.yaml > params.yaml
    timeout -k 20 $((limit * SLOW)) "$PY" scripts/exp_profile.py smollm2 --name "gpu-$name" "${COMMON[@]}" "$@"
}

# zero2 needs the launcher's accelerate config: a checkout without it says so (status SKIPPED)
zero2() {
    [[ -f configs/accelerate/deepspeed_zero2.yaml ]] || { echo "no configs/accelerate/deepspeed_zero2.yaml"; return 3; }
    exp zero2 "$@"
}

throughput() {
    local model="${MODEL:-$COPY/models/imported}" size=()
    [[ "$DEVICE" == cuda ]] || size=(--steps 3 --warmup 1 --batch-size 1 --seq-len 64)  # a CPU step is slow
    timeout -k 20 300 "$PY" benchmarks/gpu_throughput.py --model "$model" --device "$DEVICE" \
        ${size[@]+"${size[@]}"} --out "$OUT/gpu_throughput.json" \
    && timeout -k 20 300 "$PY" benchmarks/gpu_throughput.py --model "$model" --device "$DEVICE" --dtype fp32 \
        ${size[@]+"${size[@]}"} --out "$OUT/gpu_throughput_fp32.json"
}

cat > "$WORK/summary.py" <<'PYTHON'
"""record NAME RC SECONDS: one check's figures, read from the copy's metrics now; table: the summary."""
import json, os, sys
from pathlib import Path

OUT, COPY = Path(os.environ["OUT"]), Path(os.environ["COPY"])
MMLU = "continuation.acc.overall.acc"
LORA, TRAIN = "lora/arithmetic.json", "train.json"
# per check: (label, file under the copy's metrics/ or, with @, under OUT, dotted key)
FIGURES = {
    "lora_bf16": [("steps", LORA, "steps"), ("loss before", LORA, "target_loss_before"),
                  ("after", LORA, "target_loss_after"), ("train s", "lora/arithmetic.timings.json", "train"),
                  ("MMLU base", "evaluate_mmlu/base.json", MMLU),
                  ("MMLU adapter", "evaluate_mmlu/lora_arithmetic.json", MMLU),
                  ("MMLU s", "evaluate_mmlu/lora_arithmetic.timings.json", "total")],
    "quantize_nf4": [("method", "quantize.json", "method"), ("file ratio", "quantize.json", "file_size_ratio"),
                     ("token agreement", "quantize.json", "greedy_token_agreement"),
                     ("MMLU", "evaluate_mmlu/quantized.json", MMLU)],
    "distill": [("steps", "distill.json", "steps"), ("perplexity ratio", "distill.json", "perplexity_ratio"),
                ("train s", "distill.timings.json", "train"), ("MMLU", "evaluate_mmlu/distilled.json", MMLU)],
    "full_ft": [("steps", TRAIN, "steps"), ("val loss", TRAIN, "val_loss"),
                ("tokens/s", "train.timings.json", "tokens_per_second"), ("MMLU", "evaluate_mmlu/base.json", MMLU)],
    "qlora": [("qlora", LORA, "qlora"), ("steps", LORA, "steps"), ("loss before", LORA, "target_loss_before"),
              ("after", LORA, "target_loss_after"), ("train s", "lora/arithmetic.timings.json", "train")],
    "zero2": [("steps", TRAIN, "steps"), ("val loss", TRAIN, "val_loss"),
              ("tokens/s", "train.timings.json", "tokens_per_second")],
    "throughput": [("bf16 tokens/s", "@gpu_throughput.json", "tokens_per_s"), ("MFU", "@gpu_throughput.json", "mfu"),
                   ("peak MiB", "@gpu_throughput.json", "max_memory_mib"),
                   ("fp32 tokens/s", "@gpu_throughput_fp32.json", "tokens_per_s")],
}


def value(rel, key):
    path = OUT / rel[1:] if rel.startswith("@") else COPY / "metrics" / rel
    try:
        v = json.loads(path.read_text())
        for part in key.split("."):
            v = v[part]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return round(v, 4) if isinstance(v, float) else v


if sys.argv[1] == "record":
    name, rc, seconds = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    figures = {label: value(rel, key) for label, rel, key in FIGURES[name]} if rc == 0 else {}
    status = "ok" if rc == 0 else "SKIPPED" if rc == 3 else "TIMEOUT" if rc in (124, 137) else f"FAIL ({rc})"
    with open(OUT / "checks.jsonl", "a") as f:
        f.write(json.dumps({"check": name, "status": status, "seconds": seconds, "figures": figures}) + "\n")
else:
    rows = [json.loads(line) for line in (OUT / "checks.jsonl").read_text().splitlines()]
    env = json.loads((OUT / "torch.json").read_text())
    report = {"environment": env, "steps": int(os.environ["STEPS"]), "checks": rows}
    (OUT / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nGPU check on {env['device']} (torch {env['torch']}, CUDA {env['cuda']}), {report['steps']} steps a check")
    width = max([len("check")] + [len(r["check"]) for r in rows])
    print(f"{'check':<{width}}  {'status':<9} {'wall s':>6}  figures")
    for r in rows:
        figures = ", ".join(f"{k} {'n/a' if v is None else v}" for k, v in r["figures"].items())
        print(f"{r['check']:<{width}}  {r['status']:<9} {r['seconds']:>6}  {figures}")
    print(f"\nwrote {OUT / 'gpu_check.json'}; logs in {OUT / 'logs'}")
    sys.exit(0 if all(r["status"] in ("ok", "SKIPPED") for r in rows) else 1)
PYTHON
export OUT COPY STEPS

# ------------------------------------------------------------------ the checks
for name in $CHECKS; do
    case "$name" in
        lora_bf16) check lora_bf16 exp lora_bf16 300 lora@arithmetic evaluate_mmlu@base evaluate_mmlu@lora_arithmetic ;;
        quantize_nf4) check quantize_nf4 exp quantize_nf4 180 -S quantize.method=bnb_nf4 quantize evaluate_mmlu@quantized ;;
        distill) check distill exp distill 180 -S "distill.max_steps=$STEPS" -S "distill.save_steps=$STEPS" \
            -S distill.logging_steps=5 distill evaluate_mmlu@distilled ;;
        full_ft) check full_ft exp full_ft 180 "${TRAIN[@]}" train evaluate_mmlu@base ;;
        qlora) check qlora exp qlora 180 -S lora.qlora=true lora@arithmetic ;;
        zero2) check zero2 zero2 240 "${TRAIN[@]}" -S train.launcher.kind=accelerate \
            -S train.launcher.config=configs/accelerate/deepspeed_zero2.yaml -S train.launcher.num_processes=1 train ;;
        throughput) check throughput throughput ;;
        *) die "CHECKS: unknown check '$name' (lora_bf16 quantize_nf4 distill full_ft qlora zero2 throughput)" ;;
    esac
done

"$PY" "$WORK/summary.py" table
