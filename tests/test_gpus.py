"""GPU inventory and choice (spark_trainer.gpus): the real no-NVML path of a machine without a
driver, and the choice logic on a fake `pynvml` whose names all exist in the real module."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from dataclasses import dataclass, field

import pytest

from spark_trainer import gpus
from spark_trainer.errors import ParamsError
from tests.conftest import REPO, venv_env

MIB = 1024 * 1024


@dataclass
class FakeGpu:
    name: str
    free_mib: int
    total_mib: int = 81_559
    util: int | None = 0  # None: NVML says NotSupported
    mig: dict[int, FakeGpu] | None = None  # slot -> instance; None: a GPU without MIG support
    mig_slots: int = 7
    broken: bool = False  # NVML fails on it (a lost GPU)
    uuid: str = field(default="")


def fake_nvml(gpus_: list[FakeGpu], init_error: str | None = None) -> types.ModuleType:
    """A `pynvml` module answering like the real one (same names, values and exceptions) for `gpus_`."""
    m = types.ModuleType("pynvml")
    m.calls = []

    class NVMLError(Exception):
        pass

    for name in ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded", "NVMLError_NotFound",
                 "NVMLError_NotSupported", "NVMLError_GpuIsLost"):
        setattr(m, name, type(name, (NVMLError,), {}))
    m.NVMLError = NVMLError
    m.NVML_DEVICE_MIG_ENABLE, m.NVML_DEVICE_MIG_DISABLE = 1, 0
    memory = types.SimpleNamespace  # c_nvmlMemory_t: total, free, used (bytes)

    def init():
        m.calls.append("init")
        if init_error:
            raise getattr(m, init_error)(init_error)

    def handle(index):
        if gpus_[index].broken:
            raise m.NVMLError_GpuIsLost("GPU is lost")
        return gpus_[index]

    def util(h):
        if h.util is None:
            raise m.NVMLError_NotSupported("Not Supported")
        return types.SimpleNamespace(gpu=h.util, memory=0)

    def mig_mode(h):
        if h.mig is None:
            raise m.NVMLError_NotSupported("Not Supported")
        return [m.NVML_DEVICE_MIG_ENABLE if h.mig else m.NVML_DEVICE_MIG_DISABLE] * 2

    def mig_handle(h, slot):
        if slot not in h.mig:
            raise m.NVMLError_NotFound("Not Found")
        return h.mig[slot]

    m.nvmlInit = init
    m.nvmlShutdown = lambda: m.calls.append("shutdown")
    m.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    m.nvmlDeviceGetCount = lambda: len(gpus_)
    m.nvmlDeviceGetHandleByIndex = handle
    m.nvmlDeviceGetMemoryInfo = lambda h: memory(total=h.total_mib * MIB, free=h.free_mib * MIB,
                                                 used=(h.total_mib - h.free_mib) * MIB)
    m.nvmlDeviceGetName = lambda h: h.name
    m.nvmlDeviceGetUUID = lambda h: h.uuid
    m.nvmlDeviceGetUtilizationRates = util
    m.nvmlDeviceGetMigMode = mig_mode
    m.nvmlDeviceGetMaxMigDeviceCount = lambda h: h.mig_slots if h.mig else 0
    m.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle
    return m


def machine(*free_mib: int, name: str = "NVIDIA H100 80GB HBM3") -> list[FakeGpu]:
    return [FakeGpu(name, free, uuid=f"GPU-{i}{i}{i}-aaaa") for i, free in enumerate(free_mib)]


@pytest.fixture
def install(monkeypatch):
    """Put a fake pynvml in sys.modules, with no CUDA_VISIBLE_DEVICES unless a test sets one."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def _install(gpus_: list[FakeGpu], **kwargs) -> types.ModuleType:
        module = fake_nvml(gpus_, **kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", module)
        return module

    return _install


def test_the_fake_uses_only_names_the_real_pynvml_has():
    import pynvml as real

    fake = fake_nvml([])
    names = {n for n in vars(fake) if n.startswith(("nvml", "NVML"))}
    assert {"nvmlInit", "nvmlDeviceGetMigDeviceHandleByIndex", "NVMLError_NotFound"} <= names
    assert sorted(n for n in names if not hasattr(real, n)) == []
    assert fake.NVML_DEVICE_MIG_ENABLE == real.NVML_DEVICE_MIG_ENABLE
    assert issubclass(real.NVMLError_NotFound, real.NVMLError)


def test_without_nvml_the_inventory_is_empty_and_the_choice_is_the_cpu(monkeypatch):
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    devices, reason = gpus.inventory()
    assert devices == [] and reason.startswith("NVML not available: ")
    choice = gpus.choose(4)  # no GPU to refuse over: the launch runs its processes on the CPU
    assert choice.visible_devices is None and choice.devices == []
    assert choice.env == {}  # nothing to set
    assert choice.reason.startswith("NVML not available: ") and choice.reason.endswith("; running on the CPU")


def test_a_driver_that_fails_to_start_is_a_reason_not_an_exception(install):
    nvml = install(machine(1000), init_error="NVMLError_DriverNotLoaded")
    assert gpus.inventory() == ([], "NVML not available: NVMLError_DriverNotLoaded")
    assert nvml.calls == ["init"]  # nothing to shut down
    assert gpus.choose(1).visible_devices is None


def test_inventory_lists_memory_utilisation_and_mig_instances(install):
    a100 = "NVIDIA A100-SXM4-80GB"
    mig = {0: FakeGpu(f"{a100} MIG 3g.40gb", 40_000, 40_192, util=None, uuid="MIG-aaaa"),
           2: FakeGpu(f"{a100} MIG 1g.10gb", 9_000, 9_984, util=None, uuid="MIG-bbbb")}
    nvml = install([FakeGpu(a100, 50_000, util=None, mig=mig, uuid="GPU-mig"),
                    FakeGpu(a100, 70_000, util=35, mig={}, uuid="GPU-plain")])
    devices, reason = gpus.inventory()
    assert reason == "NVML, driver 550.54.15: 2 GPU(s)" and nvml.calls == ["init", "shutdown"]
    first, second = devices
    assert (first.index, first.uuid, first.mig_enabled, first.utilization) == (0, "GPU-mig", True, None)
    assert [(d.uuid, d.free_mib, d.mig_index, d.index) for d in first.mig] == [("MIG-aaaa", 40_000, 0, 0),
                                                                           ("MIG-bbbb", 9_000, 2, 0)]
    assert first.units() == list(first.mig)  # CUDA sees the instances, not the GPU
    assert (second.mig_enabled, second.mig, second.utilization, second.total_mib) == (False, (), 35, 81_559)


def test_a_lost_gpu_is_skipped_and_named(install):
    gpus_ = machine(1000, 2000)
    gpus_[0].broken = True
    install(gpus_)
    devices, reason = gpus.inventory()
    assert [d.index for d in devices] == [1]
    assert "skipped, NVML could not query them: GPU 0 (GPU is lost)" in reason


def test_choose_takes_the_most_free_memory_ties_by_index(install):
    install(machine(10_000, 70_000, 30_000, 70_000))
    two = gpus.choose(2)
    assert two.visible_devices == "1,3"  # NVML's indices ...
    assert two.env == {"CUDA_VISIBLE_DEVICES": "1,3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}  # ... which CUDA then uses too
    assert [d.index for d in two.devices] == [1, 3]
    assert two.reason.startswith("chose GPU 1 (NVIDIA H100 80GB HBM3, 70,000 of 81,559 MiB free), GPU 3")
    assert "the 2 with the most free memory of 4 usable on this machine" in two.reason
    assert gpus.choose(1).visible_devices == "1"  # the tie goes to the lower index
    assert [d.index for d in gpus.choose(3).devices] == [1, 2, 3]


def test_too_few_gpus_or_too_little_memory_is_refused_with_the_fix(install):
    install(machine(10_000, 70_000))
    with pytest.raises(ParamsError, match=r"launcher.num_processes: 3 processes need 3 GPUs, but only 2 are usable on this machine: .*"
                                          r"set launcher.num_processes to 2"):
        gpus.choose(3)
    with pytest.raises(ParamsError, match=r"^lora.launcher.num_processes: 3 "):
        gpus.choose(3, key="lora.launcher.num_processes")
    with pytest.raises(ParamsError, match=r"2 GPU\(s\) with at least 20,000 MiB free are needed, but only 1 "
                                          r".*GPU 0 10,000 MiB"):
        gpus.choose(2, min_free_mib=20_000)
    assert gpus.choose(1, min_free_mib=20_000).visible_devices == "1"


def test_mig_instances_serve_one_process_only(install):
    mig = {1: FakeGpu("MIG 3g.40gb", 40_000, util=None, uuid="MIG-big"),
           3: FakeGpu("MIG 1g.10gb", 9_000, util=None, uuid="MIG-small")}
    install([FakeGpu("NVIDIA A100", 80_000, util=None, mig=mig, uuid="GPU-parent"),
             FakeGpu("NVIDIA A100", 20_000, mig={}, uuid="GPU-plain")])
    one = gpus.choose(1)  # the parent's 80,000 MiB are not usable: its instances are
    assert one.visible_devices == "MIG-big" and one.devices[0].label == "GPU 0 MIG 1"  # a MIG instance has no index
    assert one.env["CUDA_VISIBLE_DEVICES"] == "MIG-big"
    with pytest.raises(ParamsError, match=r"2 GPUs, but only 1 are usable on this machine: GPU 1 \(NVIDIA A100\) .*2 MIG instance\(s\) serve a one-process "
                                          r"run only"):
        gpus.choose(2)


def test_a_user_cuda_visible_devices_limits_the_choice(install, monkeypatch):
    install(machine(10_000, 70_000, 30_000, 50_000))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,GPU-222,3")  # an index, a UUID prefix, an index
    choice = gpus.choose(2)
    assert choice.visible_devices == "2,3"
    assert "among CUDA_VISIBLE_DEVICES=0,GPU-222,3 (set before the launch)" in choice.reason
    with pytest.raises(ParamsError, match="but only 3 are usable among CUDA_VISIBLE_DEVICES.*or unset CUDA_VISIBLE"):
        gpus.choose(4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,GPU-9")
    with pytest.raises(ParamsError, match=r"entry 'GPU-9' matches no usable device \(NVML lists: GPU 0 GPU-000"):
        gpus.choose(1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-")
    with pytest.raises(ParamsError, match="matches several devices"):
        gpus.choose(1)
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert gpus.choose(1) == gpus.Choice(None, [], f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU; "
                                                       "running on the CPU")


def test_the_script_prints_the_table_and_the_choice(install, monkeypatch, capsys):
    import runpy

    mig = {0: FakeGpu("NVIDIA A100 MIG 7g.80gb", 79_000, util=None, uuid="MIG-cafe")}
    install([FakeGpu("NVIDIA A100", 81_000, util=None, mig=mig, uuid="GPU-parent"),
             FakeGpu("NVIDIA L4", 20_000, 22_563, util=12, mig=None, uuid="GPU-l4")])
    monkeypatch.setattr(sys, "argv", ["gpus.py", "--choose", "1"])
    runpy.run_path(str(REPO / "scripts/gpus.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "NVML, driver 550.54.15: 2 GPU(s)"
    assert lines[1].split() == ["device", "name", "free", "MiB", "total", "MiB", "util", "MIG", "uuid"]
    assert lines[2].split()[-3:] == ["-", "on", "GPU-parent"]
    assert lines[3].split()[:3] == ["GPU", "0", "MIG"] and lines[3].split()[-1] == "MIG-cafe"
    assert lines[4].split()[-5:] == ["20,000", "22,563", "12%", "off", "GPU-l4"]
    assert lines[-1] == "CUDA_VISIBLE_DEVICES=MIG-cafe"


def test_the_script_on_this_machine_exits_0_and_says_why_the_list_is_empty():
    run = subprocess.run([sys.executable, "scripts/gpus.py", "--json", "--choose", "2"], cwd=REPO, env=venv_env(),
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    if out["devices"]:
        pytest.skip("this machine has GPUs")
    assert out["reason"].startswith("NVML not available")
    assert out["choice"]["visible_devices"] is None


def test_the_throughput_benchmark_knows_gpu_peaks_by_name():
    from benchmarks.gpu_throughput import peak_tflops

    names = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H200": 989.0, "NVIDIA H100 PCIe": 756.0,
             "NVIDIA H100 NVL": 835.0, "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA A100 80GB PCIe": 312.0,
             "NVIDIA L4": 121.0, "NVIDIA L40S": 362.0, "NVIDIA A10": 125.0, "NVIDIA GH200 480GB": 989.0,
             "NVIDIA A10G": None, "Tesla T4": None}  # A10G, T4: not in the table (T4 has no bf16)
    assert {name: peak_tflops(name) for name in names} == names


def test_the_throughput_benchmark_trains_on_the_cpu_and_reports_no_mfu(tmp_path, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks import gpu_throughput

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    monkeypatch.setenv("OUT", str(tmp_path / "out"))  # the default report lands under $OUT
    args = ["--model", str(tmp_path / "tiny"), "--device", "cpu", "--steps", "3", "--warmup", "1",
            "--batch-size", "2", "--seq-len", "16"]
    report = gpu_throughput.main(args)
    saved = json.loads((tmp_path / "out/gpu_throughput.json").read_text())
    assert saved == report
    assert report["device"] == "cpu" and report["tokens_per_step"] == 32 and len(report["step_seconds"]) == 3
    assert report["mfu"] is None and report["peak_tflops"] is None and report["tokens_per_s"] > 0
    n = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert report["parameters"] == n
    assert report["achieved_tflops"] == round(6 * n * report["tokens_per_s"] / 1e12, 3)
    assert 0 < report["loss_last"] < 10  # ln(64) = 4.2: a finite loss near chance on random tokens
    with_peak = gpu_throughput.main([*args, "--peak-tflops", "0.001", "--dtype", "fp32"])
    assert with_peak["peak_source"] == "--peak-tflops" and with_peak["mfu"] > 0
