"""One device rule for every stage that loads a model: `compute.device` in params.yaml.

`auto` is the first visible CUDA device when there is one, else the CPU; `cpu`, `cuda` and
`cuda:N` are taken as they are, and refused before any compute when the machine lacks them.
Under a multi-process launch each process takes the GPU of its local rank (the launcher made
the chosen GPUs visible), so `cuda:N` is for single-process stages.
"""

from __future__ import annotations

import logging
import os

from spark_trainer.errors import ParamsError
from spark_trainer.params import ComputeParams, load_section

log = logging.getLogger(__name__)


def local_rank() -> int:
    """This process's rank on its machine under accelerate/torchrun; 0 when launched alone."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 writes outputs, metrics, plots and MLflow runs; the other ranks only train."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve(device: str):
    """`compute.device` as a torch.device; a device the machine does not have is a ParamsError."""
    import torch

    cuda = torch.cuda.is_available()
    if device == "auto":
        if not cuda:
            return torch.device("cpu")
        return torch.device("cuda", local_rank())
    if device == "cpu":
        return torch.device("cpu")
    if not cuda:
        raise ParamsError(f"compute.device: {device!r} but torch sees no CUDA device on this machine "
                          f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                          "use auto or cpu")
    index = int(device.split(":")[1]) if ":" in device else local_rank()
    count = torch.cuda.device_count()
    if index >= count:
        raise ParamsError(f"compute.device: {device!r} but only {count} CUDA device(s) are visible; "
                          f"use cuda:0 .. cuda:{count - 1} or auto")
    return torch.device("cuda", index)


def stage_device(stage: str):
    """The device `stage` runs its models on, from params.yaml's compute section; logged once."""
    p: ComputeParams = load_section("compute")
    device = resolve(p.device)
    log.info("%s runs on %s (compute.device: %s)", stage, device, p.device)
    return device
