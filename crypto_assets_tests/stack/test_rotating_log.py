"""Service logs rotate by size and keep the last lines of a service that is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from local_stack.processes import PidFile
from local_stack.rotating_log import RotatingWriter


def test_writer_rotates_and_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    writer = RotatingWriter(tmp_path / "svc.log", max_bytes=1000, backups=3)
    for index in range(100):
        writer.write(f"line {index:03d} ".ljust(99).encode() + b"\n")
    writer.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["svc.log", "svc.log.1", "svc.log.2", "svc.log.3"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    assert (tmp_path / "svc.log").read_text().splitlines()[-1].startswith("line 099")


def test_wrapper_keeps_the_services_last_lines_when_the_group_is_stopped(tmp_path: Path) -> None:
    service = (
        "import signal, sys, time\n"
        "def stop(*_):\n    print('stopped cleanly', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\nprint('ready', flush=True)\ntime.sleep(60)\n"
    )
    log = tmp_path / "svc.log"
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "local_stack.rotating_log", str(log), "--", sys.executable, "-c", service],
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while "ready" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(wrapper.pid, signal.SIGTERM)
    assert wrapper.wait(timeout=20) == 0
    assert log.read_text().splitlines() == ["ready", "stopped cleanly"]


def test_wrapper_writes_the_services_pid_not_its_own(tmp_path: Path) -> None:
    pid_file = tmp_path / "svc.pid"
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "local_stack.rotating_log", "--pid-file", str(pid_file), str(tmp_path / "svc.log"), "--",
         sys.executable, "-c", "import time; time.sleep(60)"],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while PidFile(pid_file).running_pid() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        service = psutil.Process(PidFile(pid_file).running_pid())
        assert service.pid != wrapper.pid and service.ppid() == wrapper.pid
        service.kill()
        wrapper.wait(timeout=20)  # the wrapper does not outlive the service it logs
    finally:
        if wrapper.poll() is None:
            os.killpg(wrapper.pid, signal.SIGKILL)


def test_a_service_that_dies_is_reaped_while_its_orphans_still_write_to_the_log(tmp_path: Path) -> None:
    """Failed on the old code: the wrapper reaped the service only at the log pipe's end, which the service's
    orphans (Dagster's webserver and daemon) held open, so the killed service stayed a zombie."""
    pid_file, log = tmp_path / "svc.pid", tmp_path / "svc.log"
    orphan = "import time; print('orphan alive', flush=True); time.sleep(60)"
    service = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {orphan!r}]); time.sleep(60)"
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "local_stack.rotating_log", "--pid-file", str(pid_file), str(log), "--",
         sys.executable, "-c", service],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while "orphan alive" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.05)
        service_process = psutil.Process(PidFile(pid_file).running_pid())
        service_process.kill()
        service_process.wait(timeout=10)  # gone, not a zombie waiting for the pipe to close
        assert wrapper.poll() is None  # still copying what the orphan writes
    finally:
        os.killpg(wrapper.pid, signal.SIGKILL)
        wrapper.wait(timeout=10)
