"""Redis for the local stack: the broker and result backend of Superset's Celery worker and beat.

Debian's ``redis-server`` on BIND_HOST:REDIS_PORT with a password generated into ``STATE_DIR/secrets/redis``
and read from a mode-600 configuration file (never from the command line). Nothing is persisted: a lost
message is a scheduler tick, and the beat sends the next one within a minute. Clients reach it at
``REDIS_HOST`` (docker-compose's ``redis`` service takes the same password file).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import quote

from crypto_platform.credentials import generated_secret, secrets_dir
from crypto_platform.settings import PlatformSettings
from local_stack.processes import StackError
from local_stack.service import ManagedService, port_answers

REDIS_SERVER = "redis-server"
REDIS_SECRET = "redis"  # STATE_DIR/secrets/<name>
LEGACY_PASSWORD_FILE = Path("superset") / "redis_password"  # where stacks before the compose volumes kept it


def redis_password(settings: PlatformSettings) -> str:
    """Generated once into ``STATE_DIR/secrets/redis`` (a stack's older file there moves over)."""
    legacy, current = settings.state_dir / LEGACY_PASSWORD_FILE, secrets_dir(settings) / REDIS_SECRET
    if legacy.exists() and not current.exists():
        legacy.replace(current)
    return generated_secret(settings, REDIS_SECRET, 18)


def broker_url(settings: PlatformSettings) -> str:
    """REDIS_URL, else the platform Redis's URL at REDIS_HOST with its generated password (database 0)."""
    if settings.redis_url:
        return settings.redis_url
    return f"redis://:{quote(redis_password(settings), safe='')}@{settings.redis_host}:{settings.redis_port}/0"


def redis_service(settings: PlatformSettings) -> ManagedService:
    data_dir = settings.state_dir / "redis"
    config_path = data_dir / "redis.conf"

    def write_config() -> None:
        if shutil.which(REDIS_SERVER) is None:
            raise StackError("redis-server is not installed (apt-get install redis-server), "
                             "or set SUPERSET_ALERTS=0 to run Superset without alerts")
        data_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"bind {settings.bind_host}", f"port {settings.redis_port}", f"dir {data_dir}",
                 'save ""', "appendonly no", "daemonize no", "protected-mode yes", "loglevel notice",
                 "logfile \"\"", "maxmemory 64mb", "maxmemory-policy noeviction",
                 # Its own title would overwrite its environment, and with it the stack's marker.
                 "set-proc-title no",
                 f"requirepass {redis_password(settings)}"]
        descriptor = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write("\n".join(lines) + "\n")

    return ManagedService(
        "redis", settings, [REDIS_SERVER, str(config_path)], port=settings.redis_port, port_variable="REDIS_PORT",
        ready=port_answers(settings.bind_host, settings.redis_port), before_start=write_config,
        watched=("BIND_HOST", "REDIS_"),
    )
