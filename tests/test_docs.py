"""The user docs stay true to the repository.

- Every Markdown link in README.md, docs/**/*.md, benchmarks/README.md and
  models/external/README.md resolves, relative to the file that holds it, to a file or
  folder inside the repository. No link points outside it: no URL, no absolute path, no
  `../` that climbs above the repository root.
- README.md stays a short manual (at most 300 lines).
- Every stage of dvc.yaml has a reference page docs/stages/<stage>.md, linked from README.md.
- Every `python scripts/X.py`, `python stages/X.py`, `python benchmarks/X.py` and
  `make <target>` that README.md shows exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

MAX_README_LINES = 300

# [text](target) and ![alt](target), with an optional "title"; <scheme:...> autolinks;
# [label]: target reference definitions.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]*:[^>\s]*)>")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)

SCRIPT_CALL = re.compile(r"\bpython3?\s+((?:scripts|stages|benchmarks)/[\w./-]+\.py)\b")
MAKE_CALL = re.compile(r"(?:^|[\s;&|(])make\s+([A-Za-z0-9_][\w.-]*)(?=[\s;&|)`]|$)", re.MULTILINE)
MAKE_TARGET = re.compile(r"^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*:(?!=)", re.MULTILINE)


def doc_files(root: Path = REPO) -> list[Path]:
    files = [root / "README.md", root / "benchmarks" / "README.md", root / "models" / "external" / "README.md"]
    files += sorted((root / "docs").rglob("*.md"))
    return files


def without_code(text: str) -> str:
    """The Markdown outside fenced blocks and inline code spans (where [x](y) is not a link)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def code_of(text: str) -> str:
    """Only what is in fenced blocks and inline code spans: where commands are shown."""
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    spans = [m.group(2) for m in INLINE_CODE.finditer(FENCE.sub("", text))]
    return "\n".join(blocks + spans)


def link_targets(text: str) -> list[str]:
    prose = without_code(text)
    return ([m.group(1) for m in INLINE_LINK.finditer(prose)] + [m.group(1) for m in AUTOLINK.finditer(prose)]
            + [m.group(1) for m in REFERENCE.finditer(prose)])


def link_problems(md: Path, root: Path = REPO) -> list[str]:
    """Why each link of `md` is not allowed (empty list: all resolve inside `root`)."""
    root = root.resolve()
    problems = []
    for target in link_targets(md.read_text(encoding="utf-8")):
        if not target:
            problems.append("an empty link target")
            continue
        if target.startswith("#"):
            continue  # an anchor in the same file
        if SCHEME.match(target) or target.startswith("//"):
            problems.append(f"{target}: points outside the repository (a URL)")
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path.startswith("/"):
            problems.append(f"{target}: an absolute path; link relative to {md.name}")
            continue
        resolved = (md.parent / path).resolve()
        if resolved != root and root not in resolved.parents:
            problems.append(f"{target}: resolves to {resolved}, outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: {resolved.relative_to(root)} does not exist")
    return problems


def make_targets(root: Path = REPO) -> set[str]:
    text = (root / "Makefile").read_text(encoding="utf-8")
    return {t for m in MAKE_TARGET.finditer(text) for t in m.group(1).split() if not t.startswith(".")}


def readme_command_problems(text: str, root: Path = REPO) -> list[str]:
    code = code_of(text)
    problems = [f"python {s}: no such file" for s in sorted(set(SCRIPT_CALL.findall(code)))
                if not (root / s).is_file()]
    targets = make_targets(root)
    problems += [f"make {t}: no such target in the Makefile" for t in sorted(set(MAKE_CALL.findall(code)))
                 if "=" not in t and t not in targets]
    return problems


def dvc_stages(root: Path = REPO) -> list[str]:
    """Stage names of dvc.yaml as written there (a foreach stage once, by its base name)."""
    return list(yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"])


def readme_link_paths(root: Path = REPO) -> set[Path]:
    readme = root / "README.md"
    return {(root / t.split("#", 1)[0]).resolve() for t in link_targets(readme.read_text(encoding="utf-8"))
            if t and not t.startswith("#") and not SCHEME.match(t)}


# --------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("md", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves_inside_the_repository(md):
    assert md.is_file(), f"{md.relative_to(REPO)} is missing"
    problems = link_problems(md)
    assert not problems, f"{md.relative_to(REPO)}:\n  " + "\n  ".join(problems)


def test_readme_is_short():
    lines = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES}); " \
                                      "move reference material to docs/stages/"


@pytest.mark.parametrize("stage", dvc_stages())
def test_every_stage_has_a_page_linked_from_the_readme(stage):
    page = REPO / "docs" / "stages" / f"{stage}.md"
    assert page.is_file(), f"dvc.yaml stage '{stage}' has no docs/stages/{stage}.md"
    assert page.resolve() in readme_link_paths(), f"README.md does not link to docs/stages/{stage}.md"


def test_readme_commands_exist():
    problems = readme_command_problems((REPO / "README.md").read_text(encoding="utf-8"))
    assert not problems, "README.md shows commands that do not exist:\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------- the checks can fail


def test_the_checks_catch_what_they_should(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "real.md").write_text("x\n")
    (tmp_path / "Makefile").write_text("VAR := 1\n.PHONY: repro\nrepro: setup\n\techo\nsetup:\n")
    md = tmp_path / "docs" / "page.md"
    md.write_text("[ok](../real.md) [anchor](#top) [ok too](../real.md#part) [dir](.)\n"
                  "[gone](../missing.md) [web](https://example.org) [up](../../outside.md)\n"
                  "<http://example.org> [abs](/etc/passwd)\n[ref]: ../nowhere.md\n"
                  "`[code](not-a-link.md)`\n\n```\n[fenced](not-a-link-either.md)\n```\n")
    problems = link_problems(md, tmp_path)
    assert [p.split(":")[0] for p in problems] == ["../missing.md", "https", "../../outside.md", "/etc/passwd", "http",
                                                   "../nowhere.md"], problems

    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "there.py").write_text("")
    readme = ("```bash\nmake repro\nmake setup && make nothing\npython scripts/there.py --help\n"
              "python scripts/gone.py\nmake PYTHON=python3.11 repro\n```\nWe make sure of it. `make plots`\n")
    assert readme_command_problems(readme, tmp_path) == [
        "python scripts/gone.py: no such file", "make nothing: no such target in the Makefile",
        "make plots: no such target in the Makefile"]
