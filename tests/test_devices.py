"""One device rule: `compute.device` resolves once per stage, and every stage that runs a
model takes it (dvc.yaml params) and resolves it (`devices.stage_device`).

CUDA is faked where the rule only reads torch.cuda's answers (availability, device count,
bf16 support); what needs a real GPU is checked on the CPU and on torch's `meta` device.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
import yaml

from spark_trainer import devices
from spark_trainer.errors import ParamsError
from spark_trainer.params import validate_section
from tests.conftest import REPO
from tests.test_dvc_deps import import_closure
from tests.test_evaluate_safety import tiny_model  # noqa: F401  (a fixture: a small saved causal LM)

# Stages that run a model: they take `compute` in dvc.yaml and resolve it.
MODEL_STAGES = {"quality_gates", "quantize", "evaluate_mmlu", "evaluate_safety", "canary_promote", "ingest_video",
                "evaluate_coco"}
TRAINING_STAGES = {"train", "lora", "distill", "train_captioner"}  # through the launcher (training/launch.py)
# Stages that load a model only to convert or save it: the files they write are the same
# on any device, so they stay on the CPU and take no `compute`.
CONVERT_ONLY = {
    "import_model": "converts a GGUF file or copies a folder, and counts parameters",
    "package": "traces the ONNX export on the CPU and checks it with onnxruntime's CPU provider",
    "register": "hands the bundle's model to MLflow to save; the served weights are the bundle's files",
}
# A model built or loaded in the stage's own code (tokenizers are not models).
LOADS_A_MODEL = re.compile(r"\b(?:AutoModel\w*|\w+Model|\w+For\w+)\.from_(?:pretrained|config)\("
                           r"|\bload_model\(|\bDetoxify\(|\bLlamaForCausalLM\(|\bVisionEncoderDecoderModel\(")
CALLS_STAGE_DEVICE = re.compile(r"(?<!def )\bstage_device\(")


def dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stages by name (a foreach stage by its base name, with its `do` body)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: body.get("do", body) for name, body in stages.items()}


def stage_code(name: str) -> list[Path]:
    """The stage's script and every spark_trainer module it imports, relative to the repo."""
    script = Path(f"stages/{name}.py")
    return [script, *sorted(import_closure(REPO, script))]


def takes_compute(body: dict) -> bool:
    return "compute" in body.get("params", [])


# ------------------------------------------------------------------ resolve


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def test_auto_and_cpu_are_the_cpu_without_cuda(no_cuda):
    assert devices.resolve("auto") == torch.device("cpu")
    assert devices.resolve("cpu") == torch.device("cpu")


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_names_the_key_and_the_fix(no_cuda, device):
    with pytest.raises(ParamsError, match=rf"compute.device: '{device}' but torch sees no CUDA device.*use auto or cpu"):
        devices.resolve(device)


def test_cuda_devices_by_index_and_an_index_beyond_the_count(two_gpus):
    assert devices.resolve("auto") == devices.resolve("cuda") == torch.device("cuda", 0)
    assert devices.resolve("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ParamsError, match=r"compute.device: 'cuda:2' but only 2 CUDA device\(s\).*cuda:0 .. cuda:1"):
        devices.resolve("cuda:2")


def test_under_a_multi_process_launch_auto_takes_the_local_rank(two_gpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert devices.resolve("auto") == torch.device("cuda", 1)


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:", "CPU", "cuda:0,1"])
def test_params_refuse_what_is_no_device(bad):
    with pytest.raises(ParamsError, match="compute"):
        validate_section("compute", {"device": bad})


@pytest.mark.parametrize("good", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_params_take_every_device_form(good):
    assert validate_section("compute", {"device": good}).device == good


def test_stage_device_reads_the_compute_section(project, two_gpus):
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["compute"] == {"device": "auto"}  # the repository's default
    assert devices.stage_device("evaluate_mmlu") == torch.device("cuda", 0)
    (project / "params.yaml").write_text(yaml.safe_dump({**params, "compute": {"device": "cpu"}}))
    assert devices.stage_device("evaluate_mmlu") == torch.device("cpu")


# ------------------------------------------------------------------ every model stage


def test_every_stage_that_loads_a_model_is_listed():
    """A new stage whose code builds or loads a model must join MODEL_STAGES (and take
    `compute`) or CONVERT_ONLY (with the reason); a listed stage that loads none is dropped."""
    loads = {name for name in dvc_stages()
             if any(LOADS_A_MODEL.search((REPO / f).read_text(encoding="utf-8")) for f in stage_code(name))}
    assert loads == MODEL_STAGES | TRAINING_STAGES | set(CONVERT_ONLY)


@pytest.mark.parametrize("stage", sorted(MODEL_STAGES | TRAINING_STAGES))
def test_a_model_stage_takes_compute_and_resolves_it(stage):
    assert takes_compute(dvc_stages()[stage]), f"{stage}: add `compute` to its params in dvc.yaml"
    callers = [f for f in stage_code(stage) if f.name != "devices.py"
               and CALLS_STAGE_DEVICE.search((REPO / f).read_text(encoding="utf-8"))]
    assert callers, f"{stage}: neither stages/{stage}.py nor a module it imports calls devices.stage_device"


def test_only_model_stages_take_compute():
    assert {name for name, body in dvc_stages().items() if takes_compute(body)} <= MODEL_STAGES | TRAINING_STAGES


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto is a GPU on this machine")
def test_auto_runs_a_stage_model_on_the_cpu_here(project, tiny_model):  # noqa: F811
    from spark_trainer.canary.adapters import InProcessAdapter

    device = devices.stage_device("canary_promote")
    assert device == torch.device("cpu")
    adapter = InProcessAdapter(tiny_model, device)
    assert {p.device for p in adapter.model.parameters()} == {torch.device("cpu")}
    assert isinstance(adapter.complete("The secret code is", 4), str)


def test_a_model_is_loaded_onto_the_device_given(tiny_model):  # noqa: F811
    """`meta` stands in for a GPU: a device other than the CPU that every machine has."""
    from spark_trainer.modeling import causal_lm

    model = causal_lm.load_for_inference(tiny_model, device=torch.device("meta"))
    assert {p.device.type for p in model.parameters()} == {"meta"}


# ------------------------------------------------------------------ device-dependent choices


def test_mmlu_dtype_auto_asks_the_resolved_device(monkeypatch):
    from spark_trainer.evaluation import mmlu

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    model = torch.nn.Linear(4000, 2600)  # past BF16_MIN_PARAMETERS, its parameters on the CPU
    assert mmlu.choose_dtype("auto", model, torch.device("cuda", 0)) == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert mmlu.choose_dtype("auto", model, torch.device("cuda", 0)) == "float32"
    assert mmlu.choose_dtype("auto", model, torch.device("cpu")) == mmlu.choose_dtype("auto", model)


def test_quantized_models_go_to_the_device_whole(monkeypatch):
    from spark_trainer.modeling import quantize

    assert quantize._device_map(torch.device("cpu")) == "cpu"
    assert quantize._device_map(torch.device("cuda", 1)) == {"": "cuda:1"}  # one GPU, never spread by "auto"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert quantize._bnb_config("bnb_nf4", torch.device("cuda", 0)).bnb_4bit_compute_dtype == torch.bfloat16
    assert quantize._bnb_config("bnb_nf4", torch.device("cpu")).bnb_4bit_compute_dtype == torch.float32
    assert "dynamic_int8" in quantize.supported_methods(torch.device("cpu"))


def test_dynamic_int8_stays_on_the_cpu_whatever_the_device(tiny_model, tmp_path, caplog):  # noqa: F811
    from spark_trainer.modeling import quantize
    from spark_trainer.modeling.tokenizer import load_pretrained

    quantize.save_quantized(quantize.quantize(tiny_model, "dynamic_int8"), "dynamic_int8",
                            load_pretrained(str(tiny_model)), tmp_path / "q")
    with caplog.at_level(logging.WARNING, logger="spark_trainer.modeling.quantize"):
        model = quantize.load_quantized(tmp_path / "q", torch.device("cuda", 0))
    assert model.device == torch.device("cpu")
    assert "CPU kernels only" in caplog.text
