"""Dagster's webserver refuses a foreign Host (DNS rebinding) and cross-site state-changing requests
(a web page POSTing a stopSensor mutation), on the real webserver the stack runs."""

from __future__ import annotations

import asyncio

import pytest
import requests

from local_stack.dagster_web import HostOriginGuard, allowed_hosts, basic_authorization
from local_stack.stack import LocalStack

STOP_SENSOR = {"query": "mutation StopSensor($id: String!) { stopSensor(id: $id) { __typename } }",
               "variables": {"id": "new_trades_sensor"}}


def _status(scope: dict, authorization: str | None = None) -> int | None:
    """What the guard answers (None = passed to the app)."""
    sent: list[dict] = []

    async def app(_scope, _receive, _send) -> None:
        sent.append({"status": None})

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(HostOriginGuard(app, allowed_hosts("127.0.0.1", 3000), authorization)(scope, None, send))
    return sent[0].get("status") if sent[0].get("type") != "websocket.close" else 403


def _http(method: str, host: str, origin: str | None = None) -> dict:
    headers = [(b"host", host.encode())] + ([(b"origin", origin.encode())] if origin else [])
    return {"type": "http", "method": method, "path": "/graphql", "headers": headers}


@pytest.mark.parametrize(("scope", "expected"), [
    (_http("POST", "127.0.0.1:3000", "http://127.0.0.1:3000"), None),
    (_http("POST", "localhost:3000", "http://localhost:3000"), None),
    (_http("POST", "127.0.0.1:3000"), None),  # no Origin: not a browser
    (_http("GET", "127.0.0.1:3000", "http://evil.example"), None),  # reads are CORS's business
    (_http("POST", "127.0.0.1:3000", "http://evil.example"), 403),
    (_http("POST", "127.0.0.1:3000", "null"), 403),
    (_http("POST", "127.0.0.1:3000", "http://127.0.0.1:3001"), 403),
    (_http("GET", "evil.example"), 421),
    (_http("GET", "evil.example:3000"), 421),
    (_http("GET", ""), 421),
    ({"type": "websocket", "path": "/graphql", "headers": [(b"host", b"127.0.0.1:3000"),
                                                           (b"origin", b"http://evil.example")]}, 403),
])
def test_guard_decisions(scope: dict, expected: int | None) -> None:
    assert _status(scope) == expected


def test_with_a_login_every_request_must_show_it() -> None:
    """SECURE=1: HTTP basic, checked after Host (a rebinding page learns nothing) and before Origin."""
    login = basic_authorization("dagster", "the-password")

    def with_authorization(scope: dict, value: str) -> dict:
        return {**scope, "headers": [*scope["headers"], (b"authorization", value.encode())]}

    own = _http("POST", "127.0.0.1:3000", "http://127.0.0.1:3000")
    assert _status(own, login) == 401
    assert _status(with_authorization(own, basic_authorization("dagster", "a-guess")), login) == 401
    assert _status(with_authorization(own, login), login) is None
    assert _status(with_authorization(_http("GET", "evil.example"), login), login) == 421
    assert _status(with_authorization(_http("POST", "127.0.0.1:3000", "http://evil.example"), login), login) == 403


@pytest.mark.integration
@pytest.mark.slow
def test_the_running_webserver_refuses_foreign_host_and_origin(stack: LocalStack, platform_env) -> None:
    settings = platform_env()
    (dagster,) = [service for service in LocalStack(settings).services() if service.name == "dagster"]
    dagster.start()
    try:
        url = f"http://{settings.bind_host}:{settings.dagster_port}/graphql"
        own_origin = f"http://{settings.bind_host}:{settings.dagster_port}"
        evil = requests.post(url, json=STOP_SENSOR, headers={"Origin": "http://evil.example"}, timeout=60)
        assert evil.status_code == 403, evil.text
        rebound = requests.get(f"http://{settings.bind_host}:{settings.dagster_port}/server_info",
                               headers={"Host": "evil.example"}, timeout=60)
        assert rebound.status_code == 421, rebound.text
        rebound_post = requests.post(url, json=STOP_SENSOR, headers={"Host": "evil.example"}, timeout=60)
        assert rebound_post.status_code == 421
        # The same mutation from the UI's own origin reaches GraphQL, which answers it (the id is made up).
        own = requests.post(url, json=STOP_SENSOR, headers={"Origin": own_origin}, timeout=60)
        assert "stopSensor" in own.json()["data"], own.text
        assert requests.get(url.replace("/graphql", "/server_info"), timeout=60).status_code == 200
    finally:
        dagster.stop()
