"""The Optuna search: a search space is checked before any trial runs, trials are recorded
(failed ones with their error) and a study resumes where it stopped. The trials here run a
stand-in for `dvc exp run`; tests/test_e2e.py runs real ones on the smoke pipeline."""

from __future__ import annotations

import pytest
import yaml

from spark_trainer import search
from spark_trainer.errors import ParamsError
from tests.conftest import REPO

BASE = {"study": "s", "storage": "study.db", "seed": 0, "trials": 3,
        "objective": {"metric": "metrics/quantize.json:greedy_token_agreement", "direction": "maximize"},
        "params": {"quantize.method": {"choices": ["bnb_nf4", "dynamic_int8"]}}}


def space_file(tmp_path, **changes):
    data = {**BASE, **changes}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_valid_space_loads(tmp_path):
    space = search.load_space(space_file(tmp_path, params={"quantize.method": {"choices": ["bnb_nf4"]},
                                                           "distill.alpha": {"low": 0.1, "high": 0.9}}), REPO)
    assert space.objective.file == "metrics/quantize.json" and set(space.params) == {"quantize.method", "distill.alpha"}


@pytest.mark.parametrize(("params", "message"), [
    ({"quantize.metod": {"choices": ["bnb_nf4"]}}, "quantize.metod: unknown key (did you mean 'method'?)"),
    ({"quantise.method": {"choices": ["bnb_nf4"]}}, "unknown section 'quantise' (did you mean 'quantize'?)"),
    ({"quantize.method": {"choices": ["gptq"]}}, "quantize.method: Input should be"),
    ({"distill.alpha": {"low": 0.1, "high": 1.5}}, "distill.alpha"),
    ({"distill.alpha": {"low": 0.5, "high": 0.5}}, "empty range: low (0.5) must be below high (0.5)"),
    ({"quantize.method": {"choices": []}}, "choices is empty"),
    ({}, "params"),
])
def test_a_bad_space_fails_before_any_trial_naming_the_key(tmp_path, params, message):
    with pytest.raises(ParamsError) as e:
        search.load_space(space_file(tmp_path, params=params), REPO)
    assert message in str(e.value)


@pytest.mark.parametrize(("objective", "message"), [
    ({"metric": "metrics/quantise.json:greedy_token_agreement", "direction": "maximize"},
     "no stage in dvc.yaml declares as metrics (did you mean 'metrics/quantize.json'?)"),
    ({"metric": "metrics/quantize.json:greedy_token_agreement", "direction": "up"}, "objective.direction"),
    ({"metric": "metrics/quantize.json", "direction": "maximize"}, "objective.metric"),
])
def test_a_bad_objective_is_a_clear_error(tmp_path, objective, message):
    with pytest.raises(ParamsError, match="invalid search space|objective") as e:
        search.load_space(space_file(tmp_path, objective=objective), REPO)
    assert message in str(e.value)


class FakeDvc:
    """Stands in for `dvc exp run` / `dvc exp show`: the objective is a function of the
    trial's overrides; `fail` names trials whose experiment fails."""

    def __init__(self, fail=(), interrupt=()):
        self.runs, self.fail, self.interrupt, self.results = [], set(fail), set(interrupt), {}

    def run(self, repo, name, overrides):
        self.runs.append((name, overrides))
        if name in self.interrupt:
            self.interrupt.discard(name)
            raise KeyboardInterrupt
        if name in self.fail:
            raise search.TrialFailed(f"`dvc exp run -n {name}` exited 1:\nERROR: failed to reproduce 'quantize'")
        self.results[name] = {"metrics/quantize.json": {"greedy_token_agreement": overrides["distill.alpha"]}}

    def read(self, repo, name):
        return self.results[name]


def study_space(tmp_path, trials=3):
    return search.SearchSpace.model_validate({**BASE, "trials": trials, "storage": str(tmp_path / "study.db"),
                                              "params": {"distill.alpha": {"low": 0.1, "high": 0.9}}})


def test_trials_record_their_experiment_and_a_failed_trial_does_not_stop_the_search(tmp_path):
    dvc = FakeDvc(fail={"s-trial-1"})
    study = search.search(study_space(tmp_path), tmp_path, runner=dvc.run, reader=dvc.read)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert [t.user_attrs["dvc_exp"] for t in study.trials] == ["s-trial-0", "s-trial-1", "s-trial-2"]
    assert "failed to reproduce 'quantize'" in study.trials[1].user_attrs["error"]
    assert study.best_value == max(t.value for t in study.trials if t.value is not None)
    text = search.summary(study, study_space(tmp_path))
    assert f"dvc exp apply {study.best_trial.user_attrs['dvc_exp']}" in text and "fail" in text


def test_a_study_resumes_where_it_stopped(tmp_path):
    dvc = FakeDvc(interrupt={"s-trial-1"})
    with pytest.raises(KeyboardInterrupt):
        search.search(study_space(tmp_path), tmp_path, runner=dvc.run, reader=dvc.read)
    assert [name for name, _ in dvc.runs] == ["s-trial-0", "s-trial-1"]
    study = search.search(study_space(tmp_path), tmp_path, runner=dvc.run, reader=dvc.read)
    # The interrupted trial is kept, marked, and not counted: two more complete the three.
    assert [name for name, _ in dvc.runs] == ["s-trial-0", "s-trial-1", "s-trial-2", "s-trial-3"]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3 and study.trials[1].user_attrs["interrupted"] is True
    # A larger budget later adds trials to the same study; the same seed samples the same values.
    more = search.search(study_space(tmp_path, trials=4), tmp_path, runner=dvc.run, reader=dvc.read)
    assert len([t for t in more.trials if t.state.name == "COMPLETE"]) == 4


def test_a_trial_without_the_objective_is_failed_with_the_reason(tmp_path):
    dvc = FakeDvc()
    study = search.search(study_space(tmp_path, trials=1), tmp_path, runner=dvc.run,
                          reader=lambda repo, name: {"metrics/quantize.json": {"other": 1.0}})
    assert study.trials[0].state.name == "FAIL"
    assert "has no number at 'greedy_token_agreement'" in study.trials[0].user_attrs["error"]


@pytest.mark.parametrize(("sets", "message"), [
    (["lora.rnk=4,8"], "lora.rnk: unknown key (did you mean 'rank'?)"),
    (["lora.rank=4,-8"], "lora.rank: Input should be greater than or equal to 1"),
    (["lora.rank"], "expected key=value or key=v1,v2"),
])
def test_a_sweep_with_a_bad_key_or_value_queues_nothing(sets, message):
    import subprocess
    import sys

    from tests.conftest import venv_env

    cmd = [sys.executable, "scripts/sweep.py"] + [a for s in sets for a in ("-S", s)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=venv_env(), check=False, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "queueing" not in result.stderr
