"""Files that hold evidence or credentials: readable by this OS user only.

The ledger database, its anchor file, the state directory, the login token, dev.env, evidence
exports and archived histories are written here: files 0600 from their first byte (never a moment
where another local user could open them), folders 0700. Another user's umask never matters.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

__all__ = ["FILE_MODE", "FOLDER_MODE", "private_dir", "private_file", "write_private"]

FILE_MODE = 0o600
FOLDER_MODE = 0o700


def private_dir(path: Path | str, mode: int = FOLDER_MODE) -> Path:
    """Creates `path` (and missing parents) 0700. An existing folder of ours loses every read and
    write bit for group and others; a traverse bit stays (e.g. the dev stack run as root, where
    embedded PostgreSQL runs as its own OS user and must reach its data folder: 0711, which lets
    no one else list the folder, and every file in it is 0600).

    Parents that already exist (a home directory, /tmp) are left as they are.
    """
    folder = Path(path)
    folder.mkdir(mode=mode, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # not ours (a shared folder named by the operator): left alone
        info = folder.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o066:
            folder.chmod(stat.S_IMODE(info.st_mode) & ~0o066)
    return folder


def private_file(path: Path | str) -> Path:
    """Makes sure `path` exists and is 0600: created empty (0600 from its first byte) when missing,
    else only chmod-ed.

    An existing file is never opened here: closing any descriptor of a SQLite database drops every
    POSIX lock this process holds on it (SQLite's locks are per process), which would let another
    process write under a connection that believes it holds the lock.
    """
    file = Path(path)
    try:
        os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass
    with contextlib.suppress(OSError):
        if stat.S_IMODE(file.stat().st_mode) != FILE_MODE:
            file.chmod(FILE_MODE)
    return file


def write_private(path: Path | str, text: str) -> Path:
    """Writes `text` to `path` atomically, 0600 from the first byte; the folder is made 0700 if new."""
    target = Path(path)
    if not target.parent.exists():
        private_dir(target.parent)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    target.chmod(FILE_MODE)
    return target
