"""``python -m streaming_services.workers producer|consumer``: a service's worker processes in one container.

docker-compose cannot give its replicas a worker index, and a producer worker needs one (its share of
SYMBOLS, its acknowledged-ids file), so a container runs this supervisor instead: it starts
``PRODUCER_WORKERS`` (or ``CONSUMER_WORKERS``) processes with ``--worker I``, starts again any that dies
(after a short pause, so a worker that cannot start does not spin), and on SIGTERM or SIGINT passes the
signal on and waits for all of them. ``make up`` runs the same workers as services of its own instead.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading

from crypto_platform.logs import configure_logging
from crypto_platform.settings import PlatformSettings, SettingsError

RESTART_DELAY_S = 2.0
SERVICES = {"producer": "streaming_services.producer", "consumer": "streaming_services.consumer"}

log = logging.getLogger(__name__)


def worker_count(settings: PlatformSettings, service: str) -> int:
    return settings.producer_workers if service == "producer" else settings.consumer_workers


def supervise(module: str, workers: int, stop: threading.Event) -> int:
    """Keeps ``workers`` processes of ``module`` running until ``stop``; returns the highest exit code seen
    at the end (0 when every worker stopped cleanly)."""
    processes: dict[int, subprocess.Popen] = {}
    while not stop.is_set():
        for worker in range(workers):
            process = processes.get(worker)
            if process is not None and process.poll() is None:
                continue
            if process is not None:
                log.warning("worker exited; starting it again", extra={"worker_module": module, "worker": worker,
                                                                      "exit_code": process.returncode})
            processes[worker] = subprocess.Popen([sys.executable, "-m", module, "--worker", str(worker)])
        stop.wait(RESTART_DELAY_S)
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    exits = {worker: process.wait() for worker, process in processes.items()}
    log.info("workers stopped", extra={"worker_module": module, "exit_codes": exits,
                                       "pids": {worker: process.pid for worker, process in processes.items()}})
    return max(exits.values(), default=0)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in SERVICES:
        print(f"usage: python -m streaming_services.workers {'|'.join(SERVICES)}", file=sys.stderr)
        return 2
    try:
        settings = PlatformSettings.from_env()
    except SettingsError as exc:
        print(f"workers: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return supervise(SERVICES[args[0]], worker_count(settings, args[0]), stop)


if __name__ == "__main__":
    sys.exit(main())
