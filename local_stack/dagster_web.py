"""Dagster's webserver behind a Host/Origin guard, with its daemon: what the stack runs as ``dagster``.

Dagster OSS checks neither the ``Host`` header nor the ``Origin`` of a request, so any web page a user
opens could switch the pipeline off (a cross-site ``POST /graphql`` with a ``stopSensor`` mutation), and
a DNS-rebinding page could even read the answers. ``HostOriginGuard`` refuses both: a request whose
``Host`` is not one of ``DAGSTER_ALLOWED_HOSTS`` gets 421, and a state-changing request (any method but
GET/HEAD/OPTIONS, and every WebSocket) whose ``Origin`` is not ``http(s)://<allowed host>`` gets 403.
Clients that send no ``Origin`` (the CLI, scripts, health checks) are not browsers and pass.

With SECURE=1 the UI is served over HTTPS only (the platform's server certificate, given to uvicorn) and
every request must log in (HTTP basic, user ``dagster``, its password generated into
``STATE_DIR/secrets/dagster-ui``): Dagster OSS has no login of its own, and the guard is the one front.

``python -m local_stack.dagster_web -h HOST -p PORT -w workspace.yaml`` starts ``dagster-daemon run``
as a child (same process group, so stopping the service stops both) and serves the guarded webserver.
"""

from __future__ import annotations

import base64
import functools
import hmac
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crypto_platform.settings import PlatformSettings

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def allowed_hosts(bind_host: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """``host:port`` values a browser may send for this server (loopback names and BIND_HOST), plus ``extra``."""
    names = {bind_host, "localhost", "127.0.0.1", "[::1]"}
    return frozenset({f"{name}:{port}".lower() for name in names} | {h.strip().lower() for h in extra if h.strip()})


def basic_authorization(user: str, password: str) -> str:
    """The ``Authorization`` header value of an HTTP basic login."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def dagster_url(settings: PlatformSettings) -> str:
    return f"{settings.web_scheme}://{settings.bind_host}:{settings.dagster_port}"


def login_headers(settings: PlatformSettings) -> dict[str, str]:
    """What a script sends to pass SECURE=1's login (nothing in plaintext mode)."""
    from crypto_platform.credentials import DAGSTER_UI_USER, dagster_ui_password

    return {"Authorization": basic_authorization(DAGSTER_UI_USER, dagster_ui_password(settings))} \
        if settings.secure else {}


class HostOriginGuard:
    """ASGI middleware: foreign ``Host`` → 421; with a login, a request without it → 401; foreign ``Origin``
    on a state-changing request → 403."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str], authorization: str | None = None) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = frozenset(f"{scheme}://{host}" for host in hosts for scheme in ("http", "https"))
        self.authorization = authorization

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        headers = {name.lower(): value.decode("latin-1") for name, value in scope.get("headers", ())}
        host = headers.get(b"host", "").lower()
        if host not in self.hosts:
            return 421, "unknown Host"
        if self.authorization is not None and not hmac.compare_digest(
                headers.get(b"authorization", "").encode("latin-1"), self.authorization.encode()):
            return 401, "login required"
        origin = headers.get(b"origin")
        changes_state = scope["type"] == "websocket" or scope.get("method", "GET") not in SAFE_METHODS
        if changes_state and origin is not None and origin.lower() not in self.origins:
            return 403, "cross-origin request refused"
        return None

    async def __call__(self, scope: Scope, receive, send) -> None:
        refusal = self.refusal(scope) if scope["type"] in ("http", "websocket") else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, reason = refusal
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": reason})
            return
        body = reason.encode() + b"\n"
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Basic realm="Dagster", charset="UTF-8"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _guard_webserver_app(hosts: frozenset[str], authorization: str | None) -> None:
    """Hook one: dagster_webserver's CLI builds its ASGI app through this function, then runs uvicorn."""
    import dagster_webserver.cli as webserver_cli

    build = webserver_cli.create_app_from_workspace_process_context

    def guarded(*args: Any, **kwargs: Any) -> HostOriginGuard:
        return HostOriginGuard(build(*args, **kwargs), hosts, authorization)

    webserver_cli.create_app_from_workspace_process_context = guarded


def _serve_over_tls(certfile: Path, keyfile: Path) -> None:
    """Hook two: the CLI's ``uvicorn.run`` gets the certificate (its command line has no TLS options)."""
    import dagster_webserver.cli as webserver_cli
    import uvicorn

    webserver_cli.uvicorn = SimpleNamespace(run=functools.partial(uvicorn.run, ssl_certfile=str(certfile),
                                                                  ssl_keyfile=str(keyfile)))


def main(argv: list[str] | None = None) -> None:
    from crypto_platform.settings import PlatformSettings
    from local_stack.certificates import platform_certificates

    argv = list(sys.argv[1:] if argv is None else argv)
    settings = PlatformSettings.from_env()
    workspace = argv[argv.index("-w") + 1]
    if settings.secure:
        tls = platform_certificates(settings)
        _serve_over_tls(tls.server_cert, tls.server_key)
    daemon = subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", workspace])
    try:
        _guard_webserver_app(allowed_hosts(settings.bind_host, settings.dagster_port, settings.dagster_allowed_hosts),
                             login_headers(settings).get("Authorization"))
        from dagster_webserver.cli import cli

        cli(argv, prog_name="dagster-webserver", standalone_mode=True)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


if __name__ == "__main__":
    main()
