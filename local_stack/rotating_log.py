"""Runs a command and writes its output to a size-rotated log, so a week of running can't fill the disk.

Usage: ``python -m local_stack.rotating_log [--pid-file PATH] [--user UID:GID] LOG_PATH -- COMMAND ...``. The
wrapper writes the command's pid (not its own) to the pid file, runs the command as ``--user`` when given
(PostgreSQL's server account), ignores SIGTERM and SIGINT, reaps the service as soon as it exits, keeps
copying until its output is closed (so its last lines are kept, and its orphans'), then exits with the
service's exit code.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from local_stack.processes import PidFile, as_account

MAX_BYTES = 20 * 1024 * 1024
BACKUPS = 5


class RotatingWriter:
    """Appends bytes to ``path``; past ``max_bytes`` it shifts path → path.1 → … → path.N."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("ab")

    def write(self, chunk: bytes) -> None:
        if self.file.tell() + len(chunk) > self.max_bytes and self.file.tell() > 0:
            self.rotate()
        self.file.write(chunk)
        self.file.flush()

    def rotate(self) -> None:
        self.file.close()
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self.file = self.path.open("ab")

    def close(self) -> None:
        self.file.close()


def run(log_path: Path, command: list[str], pid_file: Path | None = None,
        account: tuple[int, int] | None = None) -> int:
    # The service receives the group's signals itself; the wrapper outlives it to keep its last words.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    writer = RotatingWriter(log_path)
    child = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        restore_signals=True, preexec_fn=lambda: (signal.signal(signal.SIGTERM, signal.SIG_DFL),
                                                 signal.signal(signal.SIGINT, signal.SIG_DFL)),
        **(as_account(*account) if account is not None else {}),
    )
    assert child.stdout is not None
    if pid_file is not None:
        PidFile(pid_file).write(child.pid)
    # Reaped as soon as it exits: its orphans may hold the pipe open long after (a killed Dagster's
    # webserver and daemon), and a zombie would still look alive to anyone waiting for the service's end.
    reaper = threading.Thread(target=child.wait, name="reaper", daemon=True)
    reaper.start()
    for line in iter(child.stdout.readline, b""):
        writer.write(line)
    writer.close()
    reaper.join()
    return child.returncode


USAGE = "usage: python -m local_stack.rotating_log [--pid-file PATH] [--user UID:GID] LOG_PATH -- COMMAND ..."


def main(argv: list[str]) -> int:
    options: dict[str, str] = {}
    while argv[:1] in (["--pid-file"], ["--user"]) and len(argv) > 1:
        options[argv[0]], argv = argv[1], argv[2:]
    user = re.fullmatch(r"(\d+):(\d+)", options.get("--user", ""))
    if len(argv) < 3 or argv[1] != "--" or ("--user" in options and user is None):
        print(USAGE, file=sys.stderr)
        return 2
    pid_file = Path(options["--pid-file"]) if "--pid-file" in options else None
    account = (int(user[1]), int(user[2])) if user else None
    return run(Path(argv[0]), argv[2:], pid_file, account)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
