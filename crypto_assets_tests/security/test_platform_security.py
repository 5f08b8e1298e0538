"""The stack as a hostile local user sees it: nothing under STATE_DIR readable by others, and no generated
secret in a log, a pid file, another file or `ps -ef` (each service's own role: test_database_roles.py)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from crypto_platform.credentials import CANDLE_WRITER, DAGSTER, INGEST_WRITER, SUPERSET_META, SUPERSET_READER
from crypto_platform.settings import PlatformSettings
from local_stack.stack import LocalStack

SECRET_FILES = ("secrets/*", "superset/secret_key", "superset/admin_password")
# Configuration a server must read its own login from (the broker's SASL login as platform-admin, Redis's
# requirepass): 0600.
SECRET_HOLDING_CONFIG = ("kafka/server.properties", "redis/redis.conf")


def generated_secrets(state_dir: Path) -> dict[str, str]:
    found = {}
    for pattern in SECRET_FILES:
        for path in state_dir.glob(pattern):
            found[str(path.relative_to(state_dir))] = path.read_text().strip()
    return found


def files_under(state_dir: Path) -> list[Path]:
    """Regular files (no links, sockets or pipes) under ``state_dir``."""
    return [Path(root) / name for root, _, names in os.walk(state_dir) for name in names
            if stat.S_ISREG(os.lstat(Path(root) / name).st_mode)]


def assert_private(state_dir: Path) -> None:
    """Nothing for others; the group (PostgreSQL's, when run as root) only passes through two folders.

    A file's execute bit alone gives nothing (Spark's worker marks the jars it fetches a+x): a file counts
    as private when no one else may read or write it, a folder when no one else may enter or list it."""
    for root, folders, names in os.walk(state_dir):
        for path in [Path(root)] + [Path(root) / n for n in (*folders, *names)]:
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                continue
            allowed_group = 0o010 if path in (state_dir, state_dir / "logs") else 0
            others = 0o077 if stat.S_ISDIR(mode) else 0o066
            assert mode & others & ~allowed_group == 0, f"{path} is {oct(mode & 0o777)}"


def assert_no_secret_leaks(state_dir: Path) -> None:
    secrets = generated_secrets(state_dir)
    assert {f"secrets/{role}" for role in (INGEST_WRITER, CANDLE_WRITER, DAGSTER, SUPERSET_META, SUPERSET_READER)} \
        <= set(secrets), secrets.keys()
    ps = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True, check=True).stdout
    holders = {state_dir / name for name in (*secrets, *SECRET_HOLDING_CONFIG)}
    for config in SECRET_HOLDING_CONFIG:
        if (state_dir / config).exists():
            assert stat.S_IMODE((state_dir / config).stat().st_mode) == 0o600, config
    for name, value in secrets.items():
        assert value not in ps, f"{name} on a command line"
    for path in files_under(state_dir):
        if path in holders or (state_dir / "postgres" / "data") in path.parents:
            continue
        try:
            content = path.read_bytes()
        except FileNotFoundError:  # a running service's temporary file, gone since the walk
            continue
        for name, value in secrets.items():
            assert value.encode() not in content, f"{name} found in {path}"


@pytest.mark.integration
def test_state_dir_is_private_and_holds_no_stray_secret(stack: LocalStack) -> None:
    """The test stack's servers (PostgreSQL as cryptopg when root, Kafka) after provisioning the roles."""
    state_dir = stack.settings.state_dir
    (state_dir / "logs" / "stray.log").write_text("written by the stack's own process\n")
    assert_private(state_dir)
    assert_no_secret_leaks(state_dir)


@pytest.mark.integration  # the services' commands name the cached JDBC driver, fetched once from Maven
def test_secure_services_are_described_before_any_certificate_exists(tmp_path: Path) -> None:
    """`SECURE=1 make status` or `make down` on a state folder whose servers never started: the HTTPS
    readiness probes load ``ca.crt`` when they probe, not when the services are listed."""
    settings = PlatformSettings.from_env({"STATE_DIR": str(tmp_path), "SECURE": "1"})
    assert {"dagster", "superset", "consumer", "producer"} <= {s.name for s in LocalStack(settings).services()}
    assert not settings.tls_ca_cert.exists()
