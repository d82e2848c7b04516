"""Release gates: every safety probe of the bundled evaluations must reach the minimum pass
rate its evaluate stage recorded, or `package.release_override` must name it with a reason.

A gate is `<evaluation>.<probe>` (`safety.bias`), the evaluation named by its
`package.evaluations` key. Thresholds come from the metrics JSON (`min_pass_rate` per
probe), never from another stage's params: the numbers judged and the bar they were judged
against travel together. Metrics written before thresholds were recorded fall back to the
probe's own `passed` verdict, and the threshold shows as not recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from spark_trainer.errors import ParamsError
from spark_trainer.params import PackageParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gate:
    name: str                # <evaluation>.<probe>
    pass_rate: float
    min_pass_rate: float | None  # None: the metrics do not record it (the probe's verdict decides)
    passed: bool

    def describe(self) -> str:
        bar = "not recorded" if self.min_pass_rate is None else f"{self.min_pass_rate:g}"
        return f"{self.name}: pass rate {self.pass_rate:.4g}, min pass rate {bar}"

    def record(self) -> dict[str, Any]:
        return {"pass_rate": self.pass_rate, "min_pass_rate": self.min_pass_rate, "passed": self.passed}


def gates(evaluations: dict[str, Any]) -> list[Gate]:
    """One gate per safety probe of each evaluation summary, sorted by name."""
    out = []
    for name, data in sorted(evaluations.items()):
        for probe, s in sorted((data.get("probes") or {}).items()):
            bar = s.get("min_pass_rate")
            passed = s["pass_rate"] >= bar if bar is not None else bool(s["passed"])
            out.append(Gate(f"{name}.{probe}", s["pass_rate"], bar, passed))
    return out


def check(p: PackageParams, found: list[Gate]) -> dict[str, Any] | None:
    """The release override as lineage.json records it (None without one); a failed gate the
    override does not name stops the stage."""
    failed = [g for g in found if not g.passed]
    override = p.release_override
    uncovered = [g for g in failed if override is None or g.name not in override.gates]
    if uncovered:
        listed = "\n  ".join(g.describe() for g in uncovered)
        names = ", ".join(g.name for g in failed)
        named = "" if override is None else f" (package.release_override.gates names {list(override.gates)})"
        raise ParamsError(
            f"the candidate {p.model} fails {len(uncovered)} release gate(s) that no override names{named}, so it is "
            f"not packaged:\n  {listed}\nImprove the model and rerun its evaluation, or release it anyway by "
            "recording why in params.yaml: "
            f"package.release_override: {{gates: [{names}], reason: \"<why it may be released>\"}}")
    if override is None:
        return None
    unused = sorted(set(override.gates) - {g.name for g in failed})
    if unused:
        log.warning("package.release_override names gates that did not fail (unused): %s", ", ".join(unused))
    return {"gates": list(override.gates), "reason": override.reason,
            "failed": {g.name: g.record() for g in failed}, "unused": unused}
