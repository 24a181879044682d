"""The image: its build context (`.dockerignore` on `git archive HEAD` and on a work tree), the
Dockerfile's shape (multi-stage, pinned base, numeric user, HEALTHCHECK, hash-checked installs),
the locks, the build itself as the Dockerfile runs it (without Docker), and the entrypoint.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
ENTRYPOINT = ROOT / "deploy" / "docker-entrypoint.sh"
# Never in a build context: the virtualenv, the dev stack's state (root token, keys), deployment
# secrets, git, caches.
FORBIDDEN = (".venv", ".lockgate", "secrets", ".git", "__pycache__", ".pytest_cache", "tests")


# -- .dockerignore, as Docker reads it (moby/patternmatcher) ---------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negate, rx in rules:
        if any(rx.fullmatch(c) for c in candidates):
            result = not negate
    return result


def context_of(tree: Path) -> set[str]:
    rules = dockerignore_rules((tree / ".dockerignore").read_text())
    files = set()
    for dirpath, dirnames, filenames in os.walk(tree):
        rel_dir = Path(dirpath).relative_to(tree)
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            rel = (rel_dir / name).as_posix()
            if not excluded(rel, rules):
                files.add(rel)
    return files


def copy_sources() -> list[str]:
    """Sources of every COPY from the build context (not --from=stage)."""
    sources = []
    for line in DOCKERFILE.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from=") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def assert_context_sane(files: set[str]) -> None:
    for path in files:
        parts = path.split("/")
        bad = [p for p in parts if p in FORBIDDEN or p.endswith((".pyc", ".pyo"))]
        assert not bad, f"{path} is in the build context"
    for source in copy_sources():
        assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in files), (
            f"COPY {source}: not in context"
        )


def test_git_archive_gives_a_sane_build_context(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("LOUD: not a git checkout, so there is no HEAD to archive")
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        names = tar.getnames()
        assert not [n for n in names if n.split("/")[0] in (".venv", ".lockgate", "secrets")], "the archive itself"
        tar.extractall(tmp_path, filter="tar")
    files = context_of(tmp_path)
    assert_context_sane(files)
    assert "lockgate/worker.py" in files and "requirements.lock" in files


def test_a_work_tree_with_local_state_gives_the_same_context(tmp_path: Path) -> None:
    """What `docker build .` sends from a developer's checkout: the virtualenv, the dev stack's
    root token, deployment secrets and caches stay out."""
    for path in (".dockerignore", "Dockerfile", "pyproject.toml", "README.md", "requirements.lock"):
        shutil.copy(ROOT / path, tmp_path / path)
    for folder in ("lockgate", "gates", "activities", "workflows", "policies"):
        shutil.copytree(ROOT / folder, tmp_path / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "deploy").mkdir()
    shutil.copy(ENTRYPOINT, tmp_path / "deploy" / ENTRYPOINT.name)
    planted = [
        ".venv/lib/python3.11/site-packages/x.py",
        ".lockgate/dev.env",
        "secrets/postgres_password",
        "secrets/tls/ca.key",
        ".git/config",
        "lockgate/__pycache__/worker.cpython-311.pyc",
        "activities/stale.pyc",
        "lockgate/.lockgate/dev.env",
        "tests/test_x.py",
        "deploy/make-secrets.sh",
    ]
    for rel in planted:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    files = context_of(tmp_path)
    assert not set(planted) & files
    assert_context_sane(files)


def test_the_matcher_reads_dockerignore_as_docker_does() -> None:
    rules = dockerignore_rules("**\n!lockgate/\n**/__pycache__\n")
    assert excluded(".venv/x", rules) and excluded("README.md", rules)
    assert not excluded("lockgate/a/b.py", rules)
    assert excluded("lockgate/a/__pycache__/b.pyc", rules)


# -- the Dockerfile --------------------------------------------------------------------------------
def test_dockerfile_multi_stage_pinned_numeric_user_healthcheck() -> None:
    lines = [line.strip() for line in DOCKERFILE.splitlines()]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.M)
    assert base, "the base image is one ARG"
    # An exact patch version (and optionally a digest), never a floating tag like 3.11-slim.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base[1]), base[1]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) >= 2 and all(f.split()[1] == "${PYTHON_IMAGE}" for f in froms), froms
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 10000 and gid.isdigit(), users[-1]
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    assert "--require-hashes" in DOCKERFILE and "requirements.lock" in DOCKERFILE
    assert "--no-index" in DOCKERFILE, "lockgate itself builds from the locked tools only"
    assert '"/usr/local/bin/lockgate-entrypoint"' in DOCKERFILE


# -- the locks -------------------------------------------------------------------------------------
def _pins(lock: Path) -> dict[str, tuple[str, int]]:
    text = lock.read_text()
    pins = {}
    for m in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", text, re.M):
        pins[m[1].lower().replace("_", "-")] = (m[2], m[3].count("--hash="))
    entries = [line for line in text.splitlines() if re.match(r"^[A-Za-z0-9._-]+==", line)]
    assert len(pins) == len(entries), f"{lock.name}: an entry without hashes"
    return pins


def _requirements(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs, todo, seen = [], [Requirement(r) for r in project["dependencies"]], set()
    if extra:
        todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
    while todo:
        req = todo.pop()
        if req.name == "lockgate":  # the project's own extras, flattened
            for e in req.extras - seen:
                seen.add(e)
                todo += [Requirement(r) for r in project["optional-dependencies"][e]]
            continue
        reqs.append(req)
    return reqs


@pytest.mark.parametrize(("lock", "extra"), [("requirements.lock", None), ("requirements-ci.lock", "test")])
def test_the_locks_pin_every_dependency_with_hashes(lock: str, extra: str | None) -> None:
    pins = _pins(ROOT / lock)
    for req in _requirements(extra):
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req} is not in {lock}: run `make lock`"
        version, hashes = pins[name]
        assert req.specifier.contains(version, prereleases=True), f"{lock}: {name}=={version} does not satisfy {req}"
        assert hashes >= 1


def test_ci_installs_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements-ci.lock" in makefile


def test_the_image_build_runs_from_the_lock(tmp_path: Path) -> None:
    """The Dockerfile's build stage without Docker: a fresh venv from requirements.lock alone
    (hash-checked, no resolver), lockgate built with no index, then the image's commands run."""
    venv = tmp_path / "opt-lockgate"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    out = subprocess.run(
        [*pip, "install", "--require-hashes", "--no-deps", "-r", str(ROOT / "requirements.lock")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    src = tmp_path / "src"
    src.mkdir()
    for path in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / path, src / path)
    for folder in ("lockgate", "gates", "activities", "workflows"):
        shutil.copytree(ROOT / folder, src / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--no-build-isolation", str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    subprocess.run([*pip, "uninstall", "--yes", "setuptools", "wheel"], check=True, capture_output=True)
    check = subprocess.run([*pip, "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    for args in (["lockgate", "--help"], ["lockgate", "worker", "--help"], ["lockgate", "inbox", "--help"]):
        run = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, (args, run.stderr)
    agents = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "from lockgate.spec import load_agents; print(load_agents('lockgate.demo.shop,lockgate.demo.incident').names())",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert agents.returncode == 0 and "refund-agent" in agents.stdout, agents.stderr


# -- the entrypoint --------------------------------------------------------------------------------
def entry(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin"}
    return subprocess.run(["sh", str(ENTRYPOINT), *command], env={**base, **env}, capture_output=True, text=True)


def test_entrypoint_reads_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("postgresql+psycopg://u:p@h/db\n")
    (tmp_path / "empty").write_text("")
    out = entry(
        {
            "LOCKGATE_LEDGER_URL_FILE": str(tmp_path / "url"),
            "VAULT_TOKEN_FILE": str(tmp_path / "empty"),
            "VAULT_TOKEN": "stale",
        },
        "env",
    )
    assert out.returncode == 0, out.stderr
    env = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert env["LOCKGATE_LEDGER_URL"] == "postgresql+psycopg://u:p@h/db"
    assert "LOCKGATE_LEDGER_URL_FILE" not in env
    assert "VAULT_TOKEN" not in env, "an empty token file leaves no token"
    # Other tools' *_FILE variables are paths, not secrets to expand.
    out = entry({"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"}, "env")
    assert "SSL_CERT=" not in out.stdout
    missing = entry({"LOCKGATE_LEDGER_URL_FILE": str(tmp_path / "nope")}, "true")
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_entrypoint_reads_the_setup_credentials_as_data(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    creds = tmp_path / "worker.env"
    creds.write_text(
        f"# written by lockgate setup\nLOCKGATE_VAULT_ROLE_ID=role-1\n\nLOCKGATE_VAULT_SECRET_ID=s=$(touch {marker})\n"
    )
    out = entry({"LOCKGATE_ENV_FROM": str(creds), "LOCKGATE_VAULT_ROLE_ID": "from-env"}, "env")
    assert out.returncode == 0, out.stderr
    env = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert env["LOCKGATE_VAULT_ROLE_ID"] == "from-env", "the environment wins over the file"
    assert env["LOCKGATE_VAULT_SECRET_ID"] == f"s=$(touch {marker})"
    assert not marker.exists(), "the file was executed"
    creds.write_text("PATH=/x; rm -rf /\n")
    bad = entry({"LOCKGATE_ENV_FROM": str(creds)}, "true")
    assert bad.returncode == 0  # PATH is set in the environment already: kept, the line is data
    creds.write_text("NOT A KEY=1\n")
    assert entry({"LOCKGATE_ENV_FROM": str(creds)}, "true").returncode == 2
    assert entry({"LOCKGATE_ENV_FROM": str(tmp_path / "absent")}, "true").returncode == 2
