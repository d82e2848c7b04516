"""Which GPUs a launch gets: the machine's inventory through NVML, and a choice by free memory.

`inventory()` lists every GPU NVML sees (and, where MIG mode is on, its MIG instances);
`choose(count)` picks the `count` devices with the most free memory and returns the environment
that exposes exactly them (`Choice.env`): CUDA_VISIBLE_DEVICES as NVML's indices, with
CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA numbers GPUs as NVML does (its default is fastest
first), and MIG instances by their MIG UUIDs (they have no index). Whole GPUs go by index,
not by UUID, because DeepSpeed reads CUDA_VISIBLE_DEVICES as integers.
A CUDA_VISIBLE_DEVICES the user already set limits the choice to the devices it names.
Without NVML (no NVIDIA driver) both say why and the launch runs on the CPU; nothing raises.

`python scripts/gpus.py` prints the inventory and what a launch of N processes would get.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from spark_trainer.errors import ParamsError

HIDDEN = ("", "-1")  # CUDA_VISIBLE_DEVICES values that hide every GPU


@dataclass(frozen=True)
class Device:
    """A GPU, or one MIG instance of a GPU (then `mig_index` is set and `index` is its parent's)."""

    index: int  # NVML's index (PCI bus order)
    uuid: str  # GPU-... or MIG-...: CUDA_VISIBLE_DEVICES takes either
    name: str
    total_mib: int
    free_mib: int
    utilization: int | None = None  # % of the last sample period a kernel ran; None where NVML has none (MIG)
    mig_enabled: bool = False
    mig: tuple[Device, ...] = ()  # the instances, when MIG mode is on (CUDA then sees them, not the GPU)
    mig_index: int | None = None

    @property
    def visible_id(self) -> str:
        """How CUDA_VISIBLE_DEVICES names it (with CUDA_DEVICE_ORDER=PCI_BUS_ID): the index, or a MIG UUID."""
        return str(self.index) if self.mig_index is None else self.uuid

    @property
    def label(self) -> str:
        return f"GPU {self.index}" + ("" if self.mig_index is None else f" MIG {self.mig_index}")

    def units(self) -> list[Device]:
        """What CUDA can run on: the GPU itself, or its MIG instances when MIG mode is on."""
        return list(self.mig) if self.mig_enabled else [self]


@dataclass(frozen=True)
class Choice:
    visible_devices: str | None  # the CUDA_VISIBLE_DEVICES value to launch with; None: run on the CPU
    devices: list[Device] = field(default_factory=list)
    reason: str = ""  # what was chosen and why (or why nothing): the caller logs it

    @property
    def env(self) -> dict[str, str]:
        """The variables a launch sets: none when it runs on the CPU."""
        if self.visible_devices is None:
            return {}
        return {"CUDA_VISIBLE_DEVICES": self.visible_devices, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def _mib(n_bytes: int) -> int:
    return int(n_bytes) // (1024 * 1024)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _describe(nvml, handle, index: int, mig_index: int | None = None) -> Device:
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        utilization = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except nvml.NVMLError:  # not supported on MIG-enabled GPUs and MIG instances
        utilization = None
    return Device(index=index, uuid=_text(nvml.nvmlDeviceGetUUID(handle)), name=_text(nvml.nvmlDeviceGetName(handle)),
                  total_mib=_mib(memory.total), free_mib=_mib(memory.free), utilization=utilization,
                  mig_index=mig_index)


def _mig_instances(nvml, handle, index: int) -> tuple[bool, tuple[Device, ...]]:
    try:
        enabled = nvml.nvmlDeviceGetMigMode(handle)[0] == nvml.NVML_DEVICE_MIG_ENABLE
    except nvml.NVMLError:  # a GPU without MIG support (pre-Ampere, consumer cards) says NotSupported
        return False, ()
    if not enabled:
        return False, ()
    instances = []
    for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nvml.NVMLError_NotFound:  # an empty slot: fewer instances exist than could
            continue
        instances.append(_describe(nvml, mig, index, mig_index=slot))
    return True, tuple(instances)


def inventory() -> tuple[list[Device], str]:
    """Every GPU NVML sees, and a line saying where the list comes from (or why it is empty)."""
    try:
        import pynvml as nvml
    except ImportError as e:
        return [], f"NVML not available: {e}"
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:  # LibraryNotFound on a machine without the NVIDIA driver, DriverNotLoaded, ...
        return [], f"NVML not available: {e}"
    devices, skipped = [], []
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                mig_enabled, instances = _mig_instances(nvml, handle, index)
                gpu = _describe(nvml, handle, index)
            except nvml.NVMLError as e:  # one lost or faulty GPU should not hide the others
                skipped.append(f"GPU {index} ({e})")
                continue
            devices.append(replace(gpu, mig_enabled=mig_enabled, mig=instances))
    except nvml.NVMLError as e:
        return [], f"NVML failed: {e}"
    finally:
        nvml.nvmlShutdown()
    reason = f"NVML, driver {driver}: {len(devices)} GPU(s)"
    if skipped:
        reason += f"; skipped, NVML could not query them: {', '.join(skipped)}"
    return devices, reason


def _user_visible(gpus: list[Device], value: str) -> list[Device]:
    """The devices a user's CUDA_VISIBLE_DEVICES names: indices, GPU-/MIG- UUIDs or unique prefixes of them."""
    units = [u for gpu in gpus for u in gpu.units()]
    named = []
    for entry in (e.strip() for e in value.split(",")):
        if entry.isdigit():
            # NVML's index: CUDA's own when CUDA_DEVICE_ORDER=PCI_BUS_ID, which the launch sets; without it
            # CUDA counts fastest first (the same order on a machine of one GPU model)
            match = [u for u in units if u.index == int(entry)][:1]
        else:
            match = [u for u in units if u.uuid.startswith(entry)]
        if len(match) != 1:
            listed = ", ".join(f"{u.label} {u.uuid}" for u in units) or "none"
            problem = "matches no usable device" if not match else "matches several devices"
            raise ParamsError(f"CUDA_VISIBLE_DEVICES={value!r}: entry {entry!r} {problem} (NVML lists: {listed}); "
                              "name GPUs by the index or UUID `python scripts/gpus.py` prints, or unset it")
        named.append(match[0])
    return list(dict.fromkeys(named))


def choose(count: int, min_free_mib: int = 0, *, key: str = "launcher.num_processes") -> Choice:
    """The `count` devices with the most free memory (ties: the lower index), as a CUDA_VISIBLE_DEVICES value.

    Fewer usable devices than `count`, or fewer with `min_free_mib` free, is a ParamsError naming `key`.
    Without NVML, or with CUDA_VISIBLE_DEVICES hiding every GPU, it is a Choice of no device.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    user = os.environ.get("CUDA_VISIBLE_DEVICES")
    if user is not None and user.strip() in HIDDEN:
        return Choice(None, [], f"CUDA_VISIBLE_DEVICES={user!r} hides every GPU; running on the CPU")
    gpus, why = inventory()
    if not gpus:
        return Choice(None, [], f"{why}; running on the CPU")
    candidates = _user_visible(gpus, user) if user is not None else [u for g in gpus for u in g.units()]
    scope = f"among CUDA_VISIBLE_DEVICES={user} (set before the launch)" if user is not None else "on this machine"
    if count > 1:
        # A CUDA process sees only the first MIG instance it is given, so the processes of one launch
        # (which share one CUDA_VISIBLE_DEVICES) cannot each take a MIG instance.
        migs = [c for c in candidates if c.mig_index is not None]
        candidates = [c for c in candidates if c.mig_index is None]
        if migs and len(candidates) < count:
            why += f"; {len(migs)} MIG instance(s) serve a one-process run only"
    ranked = sorted(candidates, key=lambda d: (-d.free_mib, d.index, d.mig_index or 0))
    if len(ranked) < count:
        have = ", ".join(f"{d.label} ({d.name})" for d in ranked) or "none"
        raise ParamsError(f"{key}: {count} processes need {count} GPUs, but only {len(ranked)} are usable {scope}: "
                          f"{have} ({why}); set {key} to {max(len(ranked), 1)}"
                          + (" or unset CUDA_VISIBLE_DEVICES" if user is not None else ""))
    roomy = [d for d in ranked if d.free_mib >= min_free_mib]
    if len(roomy) < count:
        free = ", ".join(f"{d.label} {d.free_mib:,} MiB" for d in ranked)
        raise ParamsError(f"{key}: {count} GPU(s) with at least {min_free_mib:,} MiB free are needed, but only "
                          f"{len(roomy)} {scope} have that much ({free}); free memory on them (nvidia-smi lists "
                          f"the processes holding it) or lower {key}")
    chosen = sorted(roomy[:count], key=lambda d: (d.index, d.mig_index or 0))
    picked = ", ".join(f"{d.label} ({d.name}, {d.free_mib:,} of {d.total_mib:,} MiB free)" for d in chosen)
    reason = f"chose {picked}: the {count} with the most free memory of {len(ranked)} usable {scope}"
    return Choice(",".join(d.visible_id for d in chosen), chosen, reason)
