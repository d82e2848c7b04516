"""CPU, RAM and GPU use while training: MLflow's system metrics on the stage's run, and
dvclive's system monitor in the stage's plots (`tracking.system_metrics_interval_s`)."""

import json
import logging
import sys
import time
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from spark_trainer import tracking
from spark_trainer.errors import ParamsError
from spark_trainer.modeling.causal_lm import build_from_config
from spark_trainer.modeling.tokenizer import encode_documents, train_bpe
from spark_trainer.params import load_section, validate_section
from spark_trainer.training import packing, trainer
from tests.conftest import smoke_params

TEXTS = [f"Question: What is {i % 17} plus {i % 5}?\nAnswer: {i % 17 + i % 5}" for i in range(300)]
# MLflow's own names (mlflow.system_metrics.metrics.CPUMonitor), as its UI's System metrics tab shows them
CPU, RAM = "system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"


def _settings(interval_s):
    return load_section("tracking").model_copy(update={"system_metrics_interval_s": interval_s})


def _train_and_mirror(project, interval_s):
    """A short `train` run with the stage's sampler, mirrored as the stage mirrors it."""
    p = load_section("train")
    tok = train_bpe(TEXTS, p.tokenizer.vocab_size, p.tokenizer.min_frequency)
    blocks = packing.pack(encode_documents(tok, TEXTS), p.block_size).blocks
    live = project / "plots/train"
    settings = _settings(interval_s)
    started = time.time()
    trainer.train_model(build_from_config(p.model, tok, p.seed), packing.BlockDataset(blocks), p,
                        project / "ckpt", live, "fp", system_metrics=tracking.system_metrics("train", settings))
    ended = time.time()
    (project / "metrics").mkdir()
    (project / "metrics/train.json").write_text(json.dumps({"val_loss": 1.0}))
    run_id = tracking.mirror_stage("train", p, project / "metrics/train.json", step_metrics_dir=live,
                                   settings=settings, deps_hash="h")
    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}"), run_id, live, (started, ended)


def test_training_run_has_mlflow_system_metrics_and_dvclive_system_plots(project):
    client, run_id, live, (started, ended) = _train_and_mirror(project, 0.2)

    for key in (CPU, RAM):
        history = client.get_metric_history(run_id, key)
        assert history, f"{key} not logged"
        assert [m.step for m in history] == list(range(len(history)))
        assert all(started * 1000 - 1 <= m.timestamp <= ended * 1000 + 1 for m in history)
    assert all(m.value > 0 for m in client.get_metric_history(run_id, RAM))
    metrics = client.get_run(run_id).data.metrics
    assert "train/loss" in metrics and "val_loss" in metrics  # the rest of the run is as before
    assert not [k for k in metrics if k.startswith("system/cpu/")]  # dvclive's copies stay in plots/

    # dvclive: its CPU and RAM rows, on a machine with pynvml installed and no NVIDIA driver too
    system = live / "plots/metrics/system"
    for tsv in ("cpu/usage (%).tsv", "ram/usage (GB).tsv"):
        rows = (system / tsv).read_text().splitlines()
        assert rows[0].split("\t")[:2] == ["timestamp", "step"] and len(rows) >= 2, tsv
    assert (live / "plots/metrics/train/loss.tsv").is_file()


def test_interval_zero_samples_nothing(project):
    assert tracking.system_metrics("train", _settings(0)) is None
    client, run_id, live, _ = _train_and_mirror(project, 0)
    assert not [k for k in client.get_run(run_id).data.metrics if k.startswith("system/")]
    assert not (live / "plots/metrics/system").exists()
    assert (live / "plots/metrics/train/loss.tsv").is_file()


def test_only_the_main_process_samples(project, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert tracking.system_metrics("train", _settings(5.0)) is None
    monkeypatch.setenv("RANK", "0")
    assert tracking.system_metrics("train", _settings(5.0)) is not None


def test_samples_every_interval_with_steps_and_times(project):
    sampler = tracking.system_metrics("probe", _settings(0.1))
    started = time.time()
    with sampler.sampling():
        time.sleep(0.55)
    samples = [m for m in tracking._system_samples.pop("probe") if m.key == CPU]
    assert 4 <= len(samples) <= 8  # every 0.1 s plus the tail; a loaded machine may lag
    assert [m.step for m in samples] == list(range(len(samples)))
    times = [m.timestamp for m in samples]
    assert times == sorted(times) and times[-1] - times[0] >= 300 and times[0] >= started * 1000


class FakeNvml:
    """pynvml as a machine with two NVIDIA GPUs answers it (no GPU on the test machine)."""

    class NVMLError(Exception):
        pass

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=(handle + 1) * 10**9, total=80 * 10**9)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=60 + handle, memory=20)

    def nvmlDeviceGetPowerUsage(self, handle):
        return 350_000

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return 700_000


def test_every_gpu_nvml_reports_is_sampled_under_mlflow_names(project, monkeypatch):
    from mlflow.system_metrics.metrics import gpu_monitor

    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(gpu_monitor, "pynvml", fake, raising=False)
    with tracking.system_metrics("probe", _settings(0.1)).sampling():
        time.sleep(0.15)
    values = {m.key: m.value for m in tracking._system_samples.pop("probe")}
    assert values["system/gpu_0_utilization_percentage"] == 60 and values["system/gpu_1_utilization_percentage"] == 61
    assert values["system/gpu_1_memory_usage_megabytes"] == 2000 and values["system/gpu_0_power_usage_watts"] == 350
    assert CPU in values and RAM in values


def test_a_sampling_failure_never_stops_training(project, monkeypatch, caplog):
    def broken():
        raise OSError("no /proc here")

    monkeypatch.setattr(tracking, "_system_monitors", broken)
    with caplog.at_level(logging.WARNING), tracking.system_metrics("probe", _settings(0.1)).sampling():
        pass
    assert "system metrics sampling of stage 'probe' stopped: OSError: no /proc here" in caplog.text
    assert not tracking._system_samples.pop("probe")


def test_interval_below_a_tenth_of_a_second_is_refused():
    raw = {**smoke_params()["tracking"], "system_metrics_interval_s": 0.05}
    with pytest.raises(ParamsError, match=r"tracking\.system_metrics_interval_s: .*use 0 \(off\) or at least 0.1"):
        validate_section("tracking", raw)
