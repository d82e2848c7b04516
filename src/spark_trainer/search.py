"""Hyperparameter search with Optuna, each trial one DVC experiment.

A search space file names the params to tune, the objective and the budget:

    study: quantize-agreement          # the Optuna study (resumed when it exists)
    storage: search/optuna.db          # SQLite file (git-ignored); relative to the repository
    seed: 0                            # TPE sampler seed
    trials: 3                          # finished trials the study should reach
    objective:
      metric: metrics/quantize.json:greedy_token_agreement   # <metrics file>:<dotted key>
      direction: maximize              # maximize | minimize
    params:                            # dotted params.yaml key -> range or choices
      quantize.method: {choices: [bnb_nf4, bnb_int8, dynamic_int8]}
      distill.alpha: {low: 0.1, high: 0.9}              # float; `log: true`, `step` optional
      lora.rank: {low: 4, high: 16, step: 4, integer: true}

Every key is checked against params.yaml's own validation before any trial runs (an
unknown key names the closest valid one), as is the objective: its file must be a metrics
file that dvc.yaml declares. Each trial runs `dvc exp run --temp -n <study>-trial-<n> -S
key=value ...` (the workspace is untouched), and reads the objective from the experiment's
metrics (`dvc exp show --json`). The trial records its experiment name (user attribute
`dvc_exp`) and the experiment's name carries the trial number. A failed trial is recorded
as failed with its error, and the search goes on. The study lives in SQLite, so an
interrupted search (Ctrl-C) resumes where it stopped when run again.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import subprocess
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from spark_trainer.errors import ParamsError, SparkTrainerError
from spark_trainer.params import PARAMS_FILE, SECTIONS, closest, dotted_get, read_yaml, validate_section

log = logging.getLogger(__name__)

EXP_ATTR = "dvc_exp"


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = Field(default=None, gt=0)
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> Range:
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices is empty: list at least one value")
            if self.low is not None or self.high is not None:
                raise ValueError("give choices, or low and high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give choices: [...], or both low and high")
        if not self.low < self.high:
            raise ValueError(f"empty range: low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        return self

    def values(self) -> list[Any]:
        """The values that bound this range (what params validation is asked about)."""
        if self.choices is not None:
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.integer else [self.low, self.high]


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(pattern=r"^[^:]+\.json:[^:]+$")  # <metrics file>:<dotted key>
    direction: Literal["maximize", "minimize"]

    @property
    def file(self) -> str:
        return self.metric.split(":", 1)[0]

    @property
    def key(self) -> str:
        return self.metric.split(":", 1)[1]


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    study: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # also the experiments' name prefix
    storage: str = "search/optuna.db"
    seed: int = 0
    trials: int = Field(gt=0)
    objective: Objective
    params: dict[str, Range] = Field(min_length=1)


def load_space(path: str | Path, repo: Path = Path("."), params_file: str = PARAMS_FILE) -> SearchSpace:
    """Read and check a search space: its own shape, every key against params.yaml's
    validation, and the objective against dvc.yaml's metrics files."""
    raw = read_yaml(path)
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as e:
        problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ParamsError(f"{path}: invalid search space:\n  " + "\n  ".join(problems)) from None
    params = read_yaml(repo / params_file)
    for key, rng in space.params.items():
        for value in rng.values():
            check_override(params, key, value, path)
    metrics_files = declared_metrics(repo)
    if space.objective.file not in metrics_files:
        raise ParamsError(f"{path}: objective.metric names {space.objective.file}, which no stage in dvc.yaml "
                          f"declares as metrics{closest(space.objective.file, metrics_files)}")
    current = repo / space.objective.file
    if current.is_file() and lookup(json.loads(current.read_text(encoding="utf-8")), space.objective.key) is None:
        raise ParamsError(f"{path}: objective.metric: {space.objective.file} has no number at "
                          f"'{space.objective.key}'")
    return space


def check_override(params: dict[str, Any], key: str, value: Any, source: Any) -> None:
    """`-S key=value` as params.yaml's own validation sees it: an unknown key names the
    closest valid one, a bad value says what is allowed."""
    section, _, rest = key.partition(".")
    if section not in SECTIONS or section not in params:
        raise ParamsError(f"{source}: params.{key}: unknown section '{section}'{closest(section, SECTIONS)}")
    if not rest:
        raise ParamsError(f"{source}: params.{key}: name a key inside the section ({section}.<key>)")
    raw = copy.deepcopy(params[section])
    node = raw
    parts = rest.split(".")
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            valid = list(node) if isinstance(node, dict) else []
            raise ParamsError(f"{source}: params.{key}: unknown key '{part}'{closest(part, valid)}")
        node = node[part]
    if not isinstance(node, dict):
        raise ParamsError(f"{source}: params.{key}: '{'.'.join(parts[:-1])}' is not a mapping")
    node[parts[-1]] = value
    try:
        validate_section(section, raw, source=f"{source} (params.{key}={value!r})")
    except ParamsError as e:
        raise ParamsError(str(e)) from None


def declared_metrics(repo: Path) -> list[str]:
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return sorted({out.def_path for stage in dvc.index.stages for out in stage.outs if out.metric})


def lookup(data: Any, dotted: str) -> float | None:
    try:
        data = dotted_get(data, dotted)
    except KeyError:
        return None
    if isinstance(data, bool) or not isinstance(data, (int, float)) or not math.isfinite(data):
        return None
    return float(data)


def storage_url(space: SearchSpace, repo: Path) -> str:
    path = Path(space.storage)
    path = path if path.is_absolute() else repo / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def suggest(trial, key: str, rng: Range) -> Any:
    if rng.choices is not None:
        return trial.suggest_categorical(key, rng.choices)
    if rng.integer:
        return trial.suggest_int(key, int(rng.low), int(rng.high), step=int(rng.step or 1), log=rng.log)
    return trial.suggest_float(key, rng.low, rng.high, step=rng.step, log=rng.log)


class TrialFailed(SparkTrainerError):
    """A trial's experiment failed or gave no objective; the study records it and goes on."""


def run_experiment(repo: Path, name: str, overrides: dict[str, Any]) -> None:
    cmd = ["dvc", "exp", "run", "--temp", "-n", name]
    for key, value in overrides.items():
        cmd += ["-S", f"{key}={json.dumps(value) if isinstance(value, str) else value}"]
    log.info("%s", " ".join(cmd))
    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise TrialFailed(f"`{' '.join(cmd)}` exited {result.returncode}:\n{tail}")


def experiment_metrics(repo: Path, name: str) -> dict[str, Any]:
    """{metrics file: data} of experiment `name`, from `dvc exp show --json`."""
    result = subprocess.run(["dvc", "exp", "show", "--json", "--no-fetch"], cwd=repo, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise TrialFailed(f"`dvc exp show` failed: {result.stderr.strip()[-500:]}")
    for baseline in json.loads(result.stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name") == name:
                    return {path: m.get("data", {}) for path, m in ((rev.get("data") or {}).get("metrics") or {}).items()}
    raise TrialFailed(f"experiment '{name}' is not in `dvc exp show`")


def search(space: SearchSpace, repo: Path = Path("."), trials: int | None = None, runner=run_experiment,
           reader=experiment_metrics):
    """Run trials until the study has `trials` finished ones (complete or failed); return the study."""
    import optuna

    study = optuna.create_study(study_name=space.study, storage=storage_url(space, repo), load_if_exists=True,
                                direction=space.objective.direction,
                                sampler=optuna.samplers.TPESampler(seed=space.seed))
    target = trials or space.trials

    def finished() -> int:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
        return len([t for t in study.get_trials(deepcopy=False, states=states) if not t.user_attrs.get("interrupted")])

    def objective(trial) -> float:
        name = f"{space.study}-trial-{trial.number}"
        trial.set_user_attr(EXP_ATTR, name)
        overrides = {key: suggest(trial, key, rng) for key, rng in space.params.items()}
        try:
            runner(repo, name, overrides)
            value = lookup(reader(repo, name).get(space.objective.file, {}), space.objective.key)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except TrialFailed as e:
            trial.set_user_attr("error", str(e)[-2000:])
            raise
        if value is None:
            error = f"{space.objective.file} of {name} has no number at '{space.objective.key}'"
            trial.set_user_attr("error", error)
            raise TrialFailed(error)
        log.info("trial %d (%s): %s = %s", trial.number, name, space.objective.metric, value)
        return value

    while (remaining := target - finished()) > 0:
        study.optimize(objective, n_trials=remaining, catch=(TrialFailed,))
    return study


def summary(study, space: SearchSpace) -> str:
    import optuna

    lines = [(f"study '{space.study}': {len(study.trials)} trials ({space.objective.direction} "
             f"{space.objective.metric})")]
    for t in study.trials:
        value = f"{t.value:.6g}" if t.value is not None else t.state.name.lower()
        error = f"  error: {t.user_attrs['error'].splitlines()[0]}" if "error" in t.user_attrs else ""
        lines.append(f"  trial {t.number:>3}  {t.user_attrs.get(EXP_ATTR, '?'):<32} {value:<12} {t.params}{error}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        lines.append(f"best: trial {best.number}, experiment {best.user_attrs[EXP_ATTR]} ({best.value:.6g}); "
                     f"bring it into the workspace with: dvc exp apply {best.user_attrs[EXP_ATTR]}")
    else:
        lines.append("no trial completed")
    return "\n".join(lines)
