"""Several training processes from one DVC stage.

A training stage's `cmd` in dvc.yaml stays `python stages/<stage>.py ...`. When its params say
`launcher.kind: accelerate` or `torchrun`, the stage validates its params, then runs itself
again under that launcher with the same arguments and exits with its status; the launched
processes see LOCAL_RANK and train as one DDP (or DeepSpeed, FSDP) job. Rank 0 alone writes the
stage's outputs, metrics, plots and MLflow run; the others only train.

On a CPU the processes talk over gloo. With CUDA, the launcher first picks the GPUs with the
most free memory (NVML, spark_trainer.gpus) and makes only those visible.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

from spark_trainer.errors import ParamsError
from spark_trainer.params import LauncherParams

log = logging.getLogger(__name__)

# Set in the launched processes, so a stage relaunches itself once.
LAUNCHED_ENV = "SPARK_TRAINER_LAUNCHED"


def launched() -> bool:
    """Whether this process was started by a launcher (ours, or a user's own torchrun/accelerate)."""
    return LAUNCHED_ENV in os.environ or "LOCAL_RANK" in os.environ


def start(stage: str, launcher: LauncherParams):
    """The first step of a training stage, after its params: the device it trains on
    (compute.device), and under accelerate/torchrun the relaunch. Returns the device in
    every launched process; the launching one exits with the launcher's status."""
    from spark_trainer import devices

    device = devices.stage_device(stage)
    relaunch(stage, launcher, device)
    return device


def params_key(stage: str) -> str:
    """The params key of a stage's launcher: lora@arithmetic reads lora.launcher."""
    return f"{stage.split('@')[0]}.launcher"


def check(stage: str, launcher: LauncherParams, device) -> None:
    """Everything that can be known before compute: the launcher and config are there, the
    processes fit the devices. `device` is the resolved compute.device."""
    key = params_key(stage)
    if launcher.kind == "python":
        return
    if launcher.kind == "accelerate" and find_spec("accelerate") is None:
        raise ParamsError(f"{key}.kind: accelerate is not installed; `make setup` installs it, or use kind torchrun")
    if launcher.config and not Path(launcher.config).is_file():
        raise ParamsError(f"{key}.config: {launcher.config} does not exist; the configs shipped are in "
                          "configs/accelerate/ and configs/deepspeed/")
    if uses_deepspeed(launcher) and find_spec("deepspeed") is None:
        raise ParamsError(f"{key}.config: {launcher.config} needs DeepSpeed, which is not installed; "
                          "install the extra (`pip install -e '.[deepspeed]' -c constraints.txt`) or pick "
                          "configs/accelerate/ddp.yaml")
    if device.type == "cuda":
        import torch

        if launcher.num_processes > torch.cuda.device_count():
            raise ParamsError(f"{key}.num_processes: {launcher.num_processes} processes but "
                              f"{torch.cuda.device_count()} CUDA device(s); lower it (one process per GPU)")
        if device.index not in (None, 0) and launcher.num_processes > 1:
            raise ParamsError(f"compute.device: {device} names one GPU but {key}.num_processes is "
                              f"{launcher.num_processes}; use compute.device: cuda or auto")
    elif device.type == "cpu" and launcher.num_processes > (os.cpu_count() or 1):
        raise ParamsError(f"{key}.num_processes: {launcher.num_processes} processes on {os.cpu_count()} CPU "
                          "cores; lower it")


def uses_deepspeed(launcher: LauncherParams) -> bool:
    if launcher.kind == "torchrun":
        return bool(launcher.config)  # torchrun's config is a DeepSpeed JSON
    return _accelerate_config(launcher).get("distributed_type") == "DEEPSPEED"


def _accelerate_config(launcher: LauncherParams) -> dict:
    import yaml

    if launcher.kind != "accelerate" or not Path(launcher.config).is_file():
        return {}
    return yaml.safe_load(Path(launcher.config).read_text()) or {}


def shards_parameters(launcher: LauncherParams) -> bool:
    """Whether each process holds only a shard of the weights (DeepSpeed ZeRO-3, FSDP): the
    trained model must then be gathered before rank 0 evaluates and saves it."""
    import json

    config = _accelerate_config(launcher)
    if config.get("distributed_type") == "FSDP":
        return True
    ds_file = launcher.config if launcher.kind == "torchrun" else \
        (config.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if not ds_file or not Path(ds_file).is_file():
        return False
    return json.loads(Path(ds_file).read_text()).get("zero_optimization", {}).get("stage") == 3


def deepspeed_config(launcher: LauncherParams) -> str | None:
    """The DeepSpeed JSON the Trainer is given (torchrun); accelerate passes its own through the env."""
    return launcher.config if launcher.kind == "torchrun" and launcher.config else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(launcher: LauncherParams, argv: list[str]) -> list[str]:
    """The launcher's command line that runs `argv` (the stage script and its arguments)."""
    n = str(launcher.num_processes)
    port = str(free_port())
    if launcher.kind == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", n,
                "--master_addr", "127.0.0.1", "--master_port", port, *argv]
    # The config's distributed_type decides DDP, DeepSpeed or FSDP; DDP on a CPU (gloo) is
    # distributed_type MULTI_GPU with the Trainer's use_cpu (accelerate's --cpu runs one process).
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", launcher.config,
            "--num_processes", n, "--main_process_ip", "127.0.0.1", "--main_process_port", port, *argv]


def relaunch(stage: str, launcher: LauncherParams, device) -> None:
    """Run this stage again under its launcher and exit with the launcher's status; return at
    once when the launcher is `python` or this process is already a launched one."""
    if launcher.kind == "python" or launched():
        return
    check(stage, launcher, device)
    env = {**os.environ, LAUNCHED_ENV: "1"}
    if device.type == "cuda":
        from spark_trainer import gpus

        choice = gpus.choose(launcher.num_processes, key=f"{params_key(stage)}.num_processes")
        if uses_deepspeed(launcher) and any(d.mig_index is not None for d in choice.devices):
            raise ParamsError(f"{params_key(stage)}.config {launcher.config}: DeepSpeed cannot run on a "
                              f"MIG instance ({choice.reason}); use configs/accelerate/ddp.yaml, or whole GPUs")
        env.update(choice.env)
        log.info("GPUs: %s", choice.reason)
    if device.type == "cpu":
        # Each process gets its share of the cores; more threads than cores slows DDP down many-fold.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // launcher.num_processes)))
    cmd = command(launcher, [sys.argv[0], *sys.argv[1:]])
    log.info("%s: %d processes through %s: %s", stage, launcher.num_processes, launcher.kind, " ".join(cmd))
    result = subprocess.run(cmd, env=env, check=False)
    raise SystemExit(result.returncode)
