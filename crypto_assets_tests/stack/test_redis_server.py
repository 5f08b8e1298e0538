"""The local Redis as the stack manages it: found by its marker after its pid file is gone."""

from __future__ import annotations

import shutil

import psutil
import pytest

from crypto_platform.settings import PlatformSettings
from local_stack.ephemeral import stack_environment
from local_stack.processes import stop_processes
from local_stack.redis_server import redis_service

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")]


def test_a_redis_whose_pid_file_is_lost_is_still_found_and_stopped(tmp_path) -> None:
    """Redis rewrites its process title over its environment unless told not to; then the stack's marker was
    gone and a Redis whose pid file was lost outlived `make down` (seen after a failed `make up`)."""
    settings = PlatformSettings.from_env(stack_environment(tmp_path))
    service = redis_service(settings)
    service.start()
    pid = service.pid()
    try:
        service.pid_file.remove()
        assert pid in {process.pid for process in service.leftovers()}
        assert service.stop() == []
        assert not psutil.pid_exists(pid) and service.leftovers() == []
    finally:
        stop_processes(service.leftovers())
