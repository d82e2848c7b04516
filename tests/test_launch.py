"""Training stages under accelerate, torchrun and DeepSpeed: 2 processes on the CPU (gloo)
train like one process with the same global batch, rank 0 alone writes the outputs, and a
run whose rank is killed resumes on the next `dvc repro`."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spark_trainer.errors import ParamsError
from spark_trainer.params import validate_section
from spark_trainer.training import launch
from tests.conftest import deep_merge, pipeline_copy, run_ok, smoke_params, write_params

STAGE_ARGS = ["data/clean", "{out}/model", "{out}/checkpoints", "{out}/plots", "{out}/train.json"]


def launcher(**values):
    return validate_section("train", deep_merge(smoke_params()["train"], {"launcher": values})).launcher


@pytest.mark.parametrize(("values", "message"), [
    ({"kind": "python", "num_processes": 2}, "kind python runs one process"),
    ({"kind": "python", "config": "configs/accelerate/ddp.yaml"}, "read by kind accelerate or torchrun only"),
    ({"kind": "accelerate"}, "kind accelerate needs config"),
    ({"kind": "accelerate", "config": "/etc/ddp.yaml"}, "must be a file under configs/accelerate/"),
    ({"kind": "torchrun", "config": "configs/accelerate/ddp.yaml"}, "must be a file under configs/deepspeed/"),
    ({"kind": "torchrun", "config": "configs/deepspeed/../../x.json"}, "must be a file under configs/deepspeed/"),
    ({"kind": "mpirun"}, "launcher.kind"),
])
def test_bad_launcher_params_name_the_key_and_the_fix(values, message):
    with pytest.raises(ParamsError, match=message):
        launcher(**{"kind": "python", "num_processes": 1, "config": "", **values})


def test_what_the_machine_cannot_run_fails_before_compute(monkeypatch):
    cpu = torch.device("cpu")
    with pytest.raises(ParamsError, match=r"train.launcher.num_processes: 64 processes on \d+ CPU cores"):
        launch.check("train", launcher(kind="torchrun", num_processes=64, config=""), cpu)
    with pytest.raises(ParamsError, match=r"^lora.launcher.num_processes: 64"):  # the params key, not the stage's
        launch.check("lora@arithmetic", launcher(kind="torchrun", num_processes=64, config=""), cpu)
    with pytest.raises(ParamsError, match="train.launcher.config: configs/accelerate/nope.yaml does not exist"):
        launch.check("train", launcher(kind="accelerate", num_processes=2, config="configs/accelerate/nope.yaml"), cpu)
    real_find_spec = launch.find_spec
    monkeypatch.setattr(launch, "find_spec", lambda name: None if name == "deepspeed" else real_find_spec(name))
    with pytest.raises(ParamsError, match=r"needs DeepSpeed, which is not installed.*\[deepspeed\]"):
        launch.check("train", launcher(kind="accelerate", num_processes=1,
                                       config="configs/accelerate/deepspeed_zero2.yaml"), cpu)
    with pytest.raises(ParamsError, match="needs DeepSpeed"):
        launch.check("train", launcher(kind="torchrun", num_processes=1, config="configs/deepspeed/zero3.json"), cpu)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ParamsError, match="2 processes but 1 CUDA device"):
        launch.check("train", launcher(kind="torchrun", num_processes=2, config=""), torch.device("cuda", 0))


def test_a_gpu_launch_exposes_the_chosen_gpus_by_index_in_nvml_order(monkeypatch):
    from spark_trainer import gpus

    h100 = dict(name="NVIDIA H100", total_mib=81_559, free_mib=80_000)
    chosen = {"whole": [gpus.Device(index=1, uuid="GPU-111", **h100), gpus.Device(index=3, uuid="GPU-333", **h100)],
              "mig": [gpus.Device(index=0, uuid="MIG-aaa", mig_index=2, **h100)]}
    pick = "whole"
    monkeypatch.setattr(gpus, "choose", lambda count, key: gpus.Choice(
        ",".join(d.visible_id for d in chosen[pick]), chosen[pick], "chose"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv(launch.LAUNCHED_ENV, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(launch, "free_port", lambda: 29555)
    runs = []
    monkeypatch.setattr(launch.subprocess, "run", lambda cmd, env, check: runs.append(env) or subprocess.CompletedProcess(cmd, 0))
    ddp = launcher(kind="torchrun", num_processes=2, config="")
    with pytest.raises(SystemExit) as done:
        launch.relaunch("train", ddp, torch.device("cuda"))
    assert done.value.code == 0
    # DeepSpeed reads CUDA_VISIBLE_DEVICES as integers: indices, numbered as NVML numbers them
    assert (runs[0]["CUDA_VISIBLE_DEVICES"], runs[0]["CUDA_DEVICE_ORDER"]) == ("1,3", "PCI_BUS_ID")
    pick = "mig"
    zero2 = launcher(kind="accelerate", num_processes=1, config="configs/accelerate/deepspeed_zero2.yaml")
    with pytest.raises(ParamsError, match=r"^train.launcher.config configs/accelerate/deepspeed_zero2.yaml: "
                                          r"DeepSpeed cannot run on a MIG instance"):
        launch.relaunch("train", zero2, torch.device("cuda"))
    assert len(runs) == 1  # refused before any process started


def test_the_shipped_configs_say_what_they_shard(monkeypatch):
    monkeypatch.setattr(launch, "free_port", lambda: 29555)
    assert not launch.shards_parameters(launcher(kind="accelerate", num_processes=2, config="configs/accelerate/ddp.yaml"))
    assert not launch.shards_parameters(launcher(kind="torchrun", num_processes=2, config="configs/deepspeed/zero2.json"))
    for config in ("configs/accelerate/deepspeed_zero3.yaml", "configs/accelerate/fsdp.yaml"):
        assert launch.shards_parameters(launcher(kind="accelerate", num_processes=2, config=config))
    assert launch.uses_deepspeed(launcher(kind="accelerate", num_processes=2,
                                          config="configs/accelerate/deepspeed_zero2.yaml"))
    cmd = launch.command(launcher(kind="torchrun", num_processes=2, config=""), ["stages/train.py", "a"])
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nnodes"] and cmd[-2:] == ["stages/train.py", "a"]
    assert cmd[cmd.index("--master_addr") + 1:cmd.index("--master_addr") + 4] == ["127.0.0.1", "--master_port", "29555"]


def run_stage(root: Path, env: dict, out: str, **train) -> dict:
    """Run the train stage (not through DVC) with these train params; its metrics."""
    params = json.loads(json.dumps(smoke_params()))
    params["train"] = deep_merge(params["train"], train)
    write_params(root / "params.yaml", params)
    run_ok([sys.executable, "stages/train.py", *[a.format(out=out) for a in STAGE_ARGS]], root, env)
    return json.loads((root / out / "train.json").read_text())


def loss_curve(root: Path, out: str) -> list[tuple[int, float]]:
    lines = (root / out / "plots/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    return [(int(step), float(loss)) for step, loss in (line.split("\t") for line in lines)]


@pytest.mark.e2e
def test_two_processes_train_like_one_with_the_same_global_batch(smoke_pipeline, tmp_path):
    root, env = pipeline_copy(smoke_pipeline, tmp_path)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'launch.db'}"
    # 16 steps of 8 blocks stay inside the smoke corpus's first epoch (154 blocks): at an epoch's
    # end one process pads its last batch with blocks from the start (accelerate's even_batches).
    steps = {"max_steps": 16, "logging_steps": 4}
    single = run_stage(root, env, "single", batch_size=8, **steps)
    ddp = run_stage(root, env, "torchrun", batch_size=4, **steps,
                    launcher={"kind": "torchrun", "num_processes": 2, "config": ""})
    acc = run_stage(root, env, "accelerate", batch_size=4, **steps,
                    launcher={"kind": "accelerate", "num_processes": 2, "config": "configs/accelerate/ddp.yaml"})

    assert single["processes"] == 1 and ddp["processes"] == acc["processes"] == 2
    assert single["global_batch_size"] == ddp["global_batch_size"] == acc["global_batch_size"] == 8
    assert single["tokens_seen"] == ddp["tokens_seen"] == acc["tokens_seen"]
    # Same examples in every global batch, gradients averaged over the processes: the losses
    # agree to float32 summation-order noise (measured: 1e-7 relative after 16 steps).
    reference = loss_curve(root, "single")
    assert len(reference) == 4
    for name, metrics in (("torchrun", ddp), ("accelerate", acc)):
        curve = loss_curve(root, name)  # rank 0 alone writes the curve: one row per logged step
        assert [s for s, _ in curve] == [s for s, _ in reference], name
        for (_, a), (_, b) in zip(reference, curve, strict=True):
            assert math.isclose(a, b, rel_tol=1e-4), (name, a, b)
        assert math.isclose(metrics["val_loss"], single["val_loss"], rel_tol=1e-4), name
        assert sorted(p.name for p in (root / name / "model").iterdir()) == \
            sorted(p.name for p in (root / "single" / "model").iterdir())

    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`spark_trainer.stage` = 'train'")
    assert len(runs) == 3  # one per stage run, none from rank 1


@pytest.mark.e2e
@pytest.mark.parametrize("config", [
    pytest.param("configs/accelerate/deepspeed_zero2.yaml", id="zero2", marks=pytest.mark.skipif(
        launch.find_spec("deepspeed") is None, reason="the deepspeed extra is not installed")),
    pytest.param("configs/accelerate/deepspeed_zero3.yaml", id="zero3", marks=pytest.mark.skipif(
        launch.find_spec("deepspeed") is None, reason="the deepspeed extra is not installed")),
    pytest.param("configs/accelerate/fsdp.yaml", id="fsdp")])
def test_sharded_training_gathers_the_model_for_rank_0(smoke_pipeline, tmp_path, config):
    root, env = pipeline_copy(smoke_pipeline, tmp_path)
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "torch_extensions")
    single = run_stage(root, env, "single", batch_size=8, max_steps=8)
    sharded = run_stage(root, env, "sharded", batch_size=4, max_steps=8,
                        launcher={"kind": "accelerate", "num_processes": 2, "config": config})
    # rank 0 evaluated and saved the whole model, not its shard
    assert sharded["processes"] == 2 and sharded["global_batch_size"] == single["global_batch_size"] == 8
    assert math.isclose(sharded["val_loss"], single["val_loss"], rel_tol=1e-4)
    from safetensors.torch import load_file

    weights = load_file(root / "sharded/model/model.safetensors")
    assert all(t.numel() > 0 for t in weights.values())
    assert sum(t.numel() for t in weights.values()) >= sharded["parameters"] - weights["model.embed_tokens.weight"].numel()


def ranks(pid: int) -> dict[int, int]:
    """RANK -> pid of the training processes under `pid`."""
    import psutil

    found = {}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except psutil.Error:
            continue
        if rank is not None and "stages/train.py" in " ".join(child.cmdline()):
            found[int(rank)] = child.pid
    return found


@pytest.mark.e2e
def test_kill_9_of_one_rank_then_dvc_repro_resumes(smoke_pipeline, tmp_path):
    root, env = pipeline_copy(smoke_pipeline, tmp_path)
    params = smoke_params()
    params["train"] = deep_merge(params["train"], {
        "batch_size": 4, "max_steps": 200, "save_steps": 8, "logging_steps": 8,
        "launcher": {"kind": "torchrun", "num_processes": 2, "config": ""}})
    write_params(root / "params.yaml", params)
    checkpoints = root / "checkpoints/train"

    repro = subprocess.Popen(["dvc", "repro", "train"], cwd=root, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(checkpoints.glob("checkpoint-*")) and repro.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert repro.poll() is None, f"training ended before a checkpoint was seen:\n{repro.communicate()[0][-3000:]}"
        workers = ranks(repro.pid)
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGKILL)
        output = repro.communicate(timeout=120)[0]
    finally:
        if repro.poll() is None:
            os.killpg(repro.pid, signal.SIGKILL)
    assert repro.returncode != 0, output[-3000:]
    saved = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))
    assert saved and saved[-1] < 200

    run_ok(["dvc", "repro", "train"], root, env)
    metrics = json.loads((root / "metrics/train.json").read_text())
    timings = json.loads((root / "metrics/train.timings.json").read_text())
    assert metrics["steps"] == 200 and metrics["processes"] == 2
    assert timings["resumed_from_step"] >= saved[-1] >= 8
    assert not list(checkpoints.glob("checkpoint-*"))  # a finished run clears its checkpoints
