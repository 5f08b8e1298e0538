"""``STATE_DIR`` readable by the platform's users only: folders 0700, files 0600, new files likewise.

Trades, dead letters (raw hostile payloads), logs and secrets live there. PostgreSQL's unprivileged user
(``cryptopg``, when the stack runs as root) gets exactly what it needs: to pass through ``STATE_DIR`` and
``STATE_DIR/logs`` (0710, group ``cryptopg``, without listing them) to its own data folder and log files.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
PASS_THROUGH = 0o710


def write_private(path: Path, data: bytes) -> None:
    """``data`` into ``path``, mode 0600 from its first byte, replacing the file as a whole (keys, passwords)."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
        handle.write(data)
    partial.replace(path)


def restrict_state_dir(state_dir: Path, server_gid: int | None = None) -> None:
    """Removes group and other access under ``state_dir`` (symlinks untouched) and makes this process's
    new files private; ``server_gid``: the PostgreSQL server's group, let through to its folders."""
    os.umask(PRIVATE_UMASK)
    state_dir.mkdir(parents=True, exist_ok=True)
    for root, folders, files in os.walk(state_dir):
        for name in (*folders, *files):
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                os.chmod(path, stat.S_IMODE(mode) & 0o700)
    passages = (state_dir, state_dir / "logs")
    for folder in passages:
        folder.mkdir(exist_ok=True)
        folder.chmod(0o700)
    if server_gid is not None:
        for folder in passages:
            os.chown(folder, -1, server_gid)
            folder.chmod(PASS_THROUGH)
