"""The pinned ledger anchor is believed only if nobody but its owner can have written it (issue
26.6): a group/world-writable, foreign-owned or symlinked anchor (or directory) anchors nothing and
is named; pinning writes 0600 in a directory closed to others."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lockgate.config import Settings, load_settings
from lockgate.verify import anchor_file, anchor_problem, pin_keys, pinned_keys

KEYS = {1: "A" * 43 + "="}
FORGED = {1: "B" * 43 + "="}


def _settings(state: Path) -> Settings:
    return load_settings({"LOCKGATE_STATE_DIR": str(state), "LOCKGATE_LEDGER_URL": f"sqlite:///{state}/l.db"})


def test_pinning_writes_an_owner_only_anchor_that_is_believed(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "state")
    pin_keys(settings, KEYS)
    path = anchor_file(settings)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o077 == 0
    assert pinned_keys(settings) == (KEYS, f"pinned in {path}")


def test_an_anchor_others_could_write_anchors_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    settings = _settings(state)
    pin_keys(settings, KEYS)
    path = anchor_file(settings)
    path.write_text(json.dumps({"keys": {"1": FORGED[1]}}))  # what someone else rewrote

    path.chmod(0o666)
    keys, why = pinned_keys(settings)
    assert keys is None and "REFUSED" in why and "writable by group or others" in why

    path.chmod(0o600)
    os.chown(path, 4242, 4242)
    keys, why = pinned_keys(settings)
    assert keys is None and "owned by uid 4242" in why

    os.chown(path, os.geteuid(), os.getegid())
    state.chmod(0o777)
    keys, why = pinned_keys(settings)
    assert keys is None and "anchor directory" in why

    state.chmod(0o700)
    path.unlink()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"keys": {"1": FORGED[1]}}))
    elsewhere.chmod(0o600)
    path.symlink_to(elsewhere)
    assert "symbolic link" in (anchor_problem(settings) or "")


def test_pinning_after_an_online_check_replaces_an_untrusted_anchor(tmp_path: Path) -> None:
    state = tmp_path / "state"
    settings = _settings(state)
    state.mkdir(mode=0o775)
    state.chmod(0o775)  # a umask of 002
    path = anchor_file(settings)
    path.write_text(json.dumps({"keys": {"1": FORGED[1], "2": FORGED[1]}}))
    path.chmod(0o664)
    pin_keys(settings, KEYS)
    # The directory is closed, the file rewritten owner-only, and nothing of the old content kept.
    assert state.stat().st_mode & 0o022 == 0 and path.stat().st_mode & 0o777 == 0o600
    assert pinned_keys(settings)[0] == KEYS
