"""Apache Superset in the local stack: its own virtual environment, its secrets, its read-only database
role, an idempotent bootstrap (schema, roles, administrator, dashboards) and the web server.

Superset's pins conflict with Dagster's (SQLAlchemy 1.4, pandas < 2.2), so it never shares the platform's
virtual environment. Its venv (~800 MB) is cached per pinned requirements in
``~/.cache/crypto-platform/superset-venv-<hash>`` and linked from ``$STATE_DIR/superset/venv``, so a new
state folder (a test, a fresh clone on the same machine) does not install it again.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from crypto_platform.credentials import (
    SUPERSET_META,
    SUPERSET_READER,
    role_database_url,
    role_password,
    secret_file,
    tls_files,
)
from crypto_platform.logs import configure_logging
from crypto_platform.settings import PlatformSettings
from local_stack.certificates import client_context, platform_certificates
from local_stack.processes import StackError
from local_stack.redis_server import broker_url
from local_stack.service import REPO_ROOT, ManagedService

SUPERSET_DIR = REPO_ROOT / "superset"
REQUIREMENTS = SUPERSET_DIR / "requirements.txt"
CONFIG_PATH = SUPERSET_DIR / "superset_config.py"
BUNDLE_DIR = SUPERSET_DIR / "bundle"
BOOTSTRAP_SCRIPT = SUPERSET_DIR / "bootstrap.py"
ALERTS_PATH = SUPERSET_DIR / "alerts.yaml"
READER_ROLE = SUPERSET_READER
INSTALL_TIMEOUT_S = 1800
BOOTSTRAP_TIMEOUT_S = 600
READY_TIMEOUT_S = 120
# Settings whose change restarts Superset and its Celery worker and beat (SMTP_/REDIS_: the alerts' config).
SUPERSET_WATCHED = ("SUPERSET", "PG_", "DATABASE_URL", "BIND_HOST", "LOG_LEVEL", "REDIS_", "SMTP_", "SECURE")

log = logging.getLogger(__name__)


def requirements_key() -> str:
    """Hash of the pinned requirements (comments ignored): a new pin gets a new cached venv."""
    lines = [line.strip() for line in REQUIREMENTS.read_text().splitlines()]
    pins = "\n".join(line for line in lines if line and not line.startswith("#"))
    return hashlib.sha256(pins.encode()).hexdigest()[:12]


def venv_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "crypto-platform" / f"superset-venv-{requirements_key()}"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Two stacks (tests, a user's make up) installing at once install once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _install_venv(target: Path, say: Callable[[str], None]) -> None:
    """Creates the venv and installs the pins, reporting progress every few packages (pip's cache is reused)."""
    shutil.rmtree(target, ignore_errors=True)
    started = time.monotonic()
    say(f"superset: installing its virtual environment into {target} (first time only, ~800 MB)")
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True, capture_output=True)
    python = str(target / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True, capture_output=True)
    collected, tail_lines = 0, []
    with subprocess.Popen(
        [python, "-m", "pip", "install", "--progress-bar", "off", "-r", str(REQUIREMENTS)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            tail_lines = [*tail_lines[-20:], line.rstrip()]
            if line.startswith("Collecting "):
                collected += 1
                if collected % 25 == 0:
                    say(f"superset: {collected} packages resolved ({time.monotonic() - started:.0f} s)")
            elif line.startswith("Installing collected packages"):
                say(f"superset: installing {collected} packages ({time.monotonic() - started:.0f} s)")
        returncode = process.wait(timeout=INSTALL_TIMEOUT_S)
    if returncode != 0:
        raise StackError("installing Superset failed:\n" + "\n".join(tail_lines))
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    if check.returncode != 0:
        raise StackError(f"Superset's virtual environment is inconsistent: {check.stdout.strip()}")
    (target / ".complete").write_text(REQUIREMENTS.read_text())
    say(f"superset: virtual environment ready in {time.monotonic() - started:.0f} s")


def install_venv(say: Callable[[str], None]) -> Path:
    """The cached Superset venv for the pinned requirements, installed when missing."""
    target = venv_cache_dir()
    with _file_lock(target.parent / f".{target.name}.lock"):
        if not (target / ".complete").exists():
            _install_venv(target, say)
    return target


def ensure_venv(settings: PlatformSettings, say: Callable[[str], None]) -> Path:
    """The cached Superset venv, linked into the state folder."""
    target = install_venv(say)
    link = settings.state_dir / "superset" / "venv"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink() or link.resolve() != target.resolve():
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return link


def state_secret(settings: PlatformSettings, name: str, configured: str) -> str:
    """The configured value, else one generated once into ``$STATE_DIR/superset/<name>`` (mode 600)."""
    return configured or secret_file(settings.state_dir / "superset" / name, 48 if name == "secret_key" else 18)


def admin_password(settings: PlatformSettings) -> str:
    return state_secret(settings, "admin_password", settings.superset_admin_password)


def reader_password(settings: PlatformSettings) -> str:
    return role_password(settings, READER_ROLE)


def _sqlalchemy_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"postgresql+psycopg2://{rest}" if scheme in {"postgresql", "postgres"} else url


def market_data_uri(settings: PlatformSettings) -> str:
    """The read-only role's URI of the market data, without its password (injected at import)."""
    parts = urlsplit(settings.database_url)
    return f"postgresql+psycopg2://{READER_ROLE}@{parts.hostname}:{parts.port or 5432}{parts.path}"


def server_environment(settings: PlatformSettings) -> dict[str, str]:
    """What superset_config.py reads; no admin or reader password (the web server does not need them).
    With SECURE=1 its outgoing HTTPS (the alerts' worker fetching from the web server, webhooks, SMTP over
    TLS) trusts the public CAs and the platform's own."""
    return {
        **tls_environment(settings),
        "SUPERSET_CONFIG_PATH": str(CONFIG_PATH),
        "SUPERSET_SECRET_KEY": state_secret(settings, "secret_key", settings.superset_secret_key),
        "SUPERSET_METADATA_URI": _sqlalchemy_url(
            role_database_url(settings, SUPERSET_META, settings.superset_database)),
        "BIND_HOST": settings.bind_host,
        "SUPERSET_PORT": str(settings.superset_port),
        "FLASK_APP": "superset",
        **alerts_environment(settings),
    }


def tls_environment(settings: PlatformSettings) -> dict[str, str]:
    if not settings.secure:
        return {}
    trust = str(platform_certificates(settings).trust_bundle)
    return {"SUPERSET_HTTPS": "1", "SSL_CERT_FILE": trust, "REQUESTS_CA_BUNDLE": trust}


def alerts_environment(settings: PlatformSettings) -> dict[str, str]:
    """The broker, the web server's address and the destinations, for superset_config.py (alerts on only)."""
    if not settings.superset_alerts:
        return {}
    return {
        "SUPERSET_CELERY_BROKER_URL": broker_url(settings),
        "SUPERSET_BASE_URL": settings.superset_public_url,
        "SUPERSET_ALERT_WEBHOOK_URL": settings.superset_alert_webhook_url,
        "SUPERSET_ALERT_GRACE_S": str(settings.superset_alert_grace_s),
        "SMTP_HOST": settings.smtp_host, "SMTP_PORT": str(settings.smtp_port),
        "SMTP_STARTTLS": "1" if settings.smtp_starttls else "0", "SMTP_SSL": "1" if settings.smtp_ssl else "0",
        "SMTP_USER": settings.smtp_user, "SMTP_PASSWORD": settings.smtp_password,
        "SMTP_MAIL_FROM": settings.smtp_mail_from,
        "SMTP_MAIL_TO": settings.smtp_mail_to if settings.smtp_host else "",
    }


def run_bootstrap(settings: PlatformSettings, say: Callable[[str], None] = print) -> None:
    """Venv, then ``superset/bootstrap.py``: schema, roles, admin, dashboards. Idempotent. The database
    roles (the reader's login, superset_meta's database) are the stack's bootstrap's, done before."""
    venv = ensure_venv(settings, say)
    reader = reader_password(settings)
    state = settings.state_dir / "superset"
    init_stamp = state / "initialized"
    needs_init = not init_stamp.exists() or init_stamp.read_text().strip() != requirements_key()
    log_path = settings.state_dir / "logs" / "superset-bootstrap.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ, **server_environment(settings),
        "SUPERSET_ADMIN_USER": settings.superset_admin_user,
        "SUPERSET_ADMIN_PASSWORD": admin_password(settings),
        "SUPERSET_READER_PASSWORD": reader,
        "SUPERSET_MARKET_DATA_URI": market_data_uri(settings),
    }
    command = [str(venv / "bin" / "python"), str(BOOTSTRAP_SCRIPT), "--bundle", str(BUNDLE_DIR),
               "--stamp", str(state / "imported")] + (["--init"] if needs_init else [])
    if settings.superset_alerts:
        command += ["--alerts", str(ALERTS_PATH)]
    started = time.monotonic()
    with log_path.open("a") as log_file, subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=log_file, text=True, env=env, cwd=state,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            log_file.write(line)
            log_file.flush()
            if line.startswith("superset-bootstrap "):
                say("  " + line.strip())
        returncode = process.wait(timeout=BOOTSTRAP_TIMEOUT_S)
    if returncode != 0:
        raise StackError(f"Superset bootstrap failed (exit {returncode}); read {log_path}")
    if needs_init:
        init_stamp.write_text(requirements_key() + "\n")
    log.info("superset bootstrapped", extra={"seconds": f"{time.monotonic() - started:.1f}", "init": needs_init})
    say(f"superset: log in at {login_hint(settings)}")


def _superset_ready(settings: PlatformSettings) -> Callable[[], bool]:
    """/health is not enough (it answers while /login/ fails on a missing module): both must answer 200."""
    base_url = superset_url(settings)

    def ready() -> bool:
        context = client_context(settings)  # here: the certificates exist once the servers have started
        try:
            for path in ("/health", "/login/"):
                with urllib.request.urlopen(base_url + path, timeout=5, context=context) as response:
                    if response.status != 200:
                        return False
            return True
        except OSError:
            return False

    return ready


def superset_url(settings: PlatformSettings) -> str:
    """The web server's own address (``SUPERSET_PUBLIC_URL`` may be a proxy's): HTTPS only with SECURE=1."""
    return f"{settings.web_scheme}://{settings.bind_host}:{settings.superset_port}"


def server_command(settings: PlatformSettings) -> list[str]:
    """gunicorn with one worker and threads for a dashboard's parallel chart queries, on BIND_HOST; with
    SECURE=1 it speaks TLS only, with the platform's server certificate (made before the first start)."""
    venv = settings.state_dir / "superset" / "venv"
    tls = tls_files(settings)
    https = ["--certfile", str(tls.server_cert), "--keyfile", str(tls.server_key)] if settings.secure else []
    return [str(venv / "bin" / "gunicorn"), "--bind", f"{settings.bind_host}:{settings.superset_port}", *https,
            "--workers", "1", "--worker-class", "gthread", "--threads", "8", "--timeout", "120",
            "--graceful-timeout", "10", "--limit-request-line", "0", "--no-control-socket",
            "superset.app:create_app()"]


def superset_service(settings: PlatformSettings, say: Callable[[str], None] = print) -> ManagedService:
    """Superset for ``make up``: bootstrapped before each start, ready once /health and /login/ answer."""
    environment: dict[str, str] = {}

    def prepare() -> None:
        run_bootstrap(settings, say)
        environment.update(server_environment(settings))

    return ManagedService(
        "superset", settings, server_command(settings), port=settings.superset_port, port_variable="SUPERSET_PORT",
        env=environment, ready=_superset_ready(settings), before_start=prepare,
        ready_timeout_s=READY_TIMEOUT_S, watched=SUPERSET_WATCHED,
    )


def worker_command(settings: PlatformSettings) -> list[str]:
    """One Celery worker process (solo pool, superset/celery_worker.py): alerts run one after another."""
    venv = settings.state_dir / "superset" / "venv"
    return [str(venv / "bin" / "python"), "-m", "celery_worker"]


def beat_command(settings: PlatformSettings) -> list[str]:
    """The beat without the Superset app (superset/celery_beat.py); its schedule file in the state folder."""
    venv = settings.state_dir / "superset" / "venv"
    return [str(venv / "bin" / "python"), "-m", "celery_beat",
            f"--schedule={settings.state_dir / 'superset' / 'celerybeat-schedule'}"]


def celery_services(settings: PlatformSettings) -> list[ManagedService]:
    """Superset's Celery worker and beat for ``make up``; they start after the web server's bootstrap."""
    worker_env: dict[str, str] = {"PYTHONPATH": str(SUPERSET_DIR)}
    beat_env: dict[str, str] = {"PYTHONPATH": str(SUPERSET_DIR)}

    def prepare(environment: dict[str, str]) -> Callable[[], None]:
        def fill() -> None:
            ensure_venv(settings, print)
            environment.update(server_environment(settings))
        return fill

    def log_says(name: str, text: str) -> Callable[[], bool]:
        path = settings.state_dir / "logs" / f"{name}.log"
        return lambda: path.exists() and text in path.read_text(errors="replace")

    return [ManagedService("superset-worker", settings, worker_command(settings), env=worker_env,
                           before_start=prepare(worker_env), ready=log_says("superset-worker", " ready."),
                           ready_timeout_s=READY_TIMEOUT_S, watched=SUPERSET_WATCHED),
            ManagedService("superset-beat", settings, beat_command(settings), env=beat_env,
                           before_start=prepare(beat_env), ready=log_says("superset-beat", "beat: Starting"),
                           ready_timeout_s=READY_TIMEOUT_S, watched=SUPERSET_WATCHED)]


def login_hint(settings: PlatformSettings) -> str:
    """Where to log in, naming the password's file (never the password)."""
    source = ("SUPERSET_ADMIN_PASSWORD" if settings.superset_admin_password
              else str(settings.state_dir / "superset" / "admin_password"))
    return f"{superset_url(settings)} user {settings.superset_admin_user}, password in {source}"


def serve() -> None:
    """docker-compose's superset service: the same bootstrap as ``make up``, then gunicorn in the foreground."""
    settings = PlatformSettings.from_env()
    configure_logging(settings.log_level)
    run_bootstrap(settings)
    os.execve(server_command(settings)[0], server_command(settings), {**os.environ, **server_environment(settings)})


def serve_celery(role: str) -> None:
    """docker-compose's superset-worker and superset-beat: the same commands as ``make up``, in the foreground."""
    settings = PlatformSettings.from_env()
    configure_logging(settings.log_level)
    ensure_venv(settings, print)
    command = worker_command(settings) if role == "worker" else beat_command(settings)
    os.execve(command[0], command, {**os.environ, **server_environment(settings), "PYTHONPATH": str(SUPERSET_DIR)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Superset for the platform: bootstrap, then serve.")
    parser.add_argument("role", nargs="?", choices=("web", "worker", "beat"), default="web",
                        help="web (bootstrap, then gunicorn), or the alerts' Celery worker or beat")
    parser.add_argument("--install-only", action="store_true",
                        help="only install the cached virtual environment (CI and image builds)")
    args = parser.parse_args(argv)
    if args.install_only:
        install_venv(print)
    elif args.role == "web":
        serve()
    else:
        serve_celery(args.role)


if __name__ == "__main__":
    main()
