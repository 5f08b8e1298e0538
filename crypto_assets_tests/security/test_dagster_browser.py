"""SECURE=1's Dagster UI in a real Chromium: HTTPS trusted by the platform's key, the basic login answered as
a person answers the browser's prompt, the asset list rendered, and the UI's WebSocket to /graphql (run logs,
live updates) upgraded (101) and kept open through the guard.

The login answers the browser's own 401 challenge through DevTools (``Fetch.authRequired`` ->
``Fetch.continueWithAuth``), at the point where a person types into the prompt, so the browser caches and
re-sends the credentials by its own rules, as it would for a person. Credentials in the URL take another path
(no 401, no prompt: the browser's URL-credential handling, which a person does not use), and an injected
``Authorization`` header would be sent on every request, the WebSocket too, hiding exactly what this test is
about. WebDriver BiDi's ``network.add_auth_handler`` would be the standard way, but chromedriver holds its
answer behind the classic navigation waiting for the very login (measured: a 60 s time-out).

The platform's CA is trusted by the server key's SPKI hash (``--ignore-certificate-errors-spki-list``), not
by a blanket ignore. With the guard refusing the UI's own https Origin, the UI never lists its assets and each
handshake ends in 403: this test fails (checked once).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from crypto_platform.credentials import DAGSTER_UI_USER, dagster_ui_password
from crypto_platform.settings import PlatformSettings
from local_stack.certificates import platform_certificates
from local_stack.dagster_web import dagster_url
from local_stack.ephemeral import make_state_dir, stack_environment
from local_stack.stack import LocalStack, dagster_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
UI_TIMEOUT_S = 60
WEBSOCKET_OPEN_S = 5  # how long the WebSocket must stay open after its 101 for the test to call it kept


@pytest.fixture(scope="module")
def secure_dagster() -> Iterator[PlatformSettings]:
    """PostgreSQL (Dagster's storage) and the guarded Dagster webserver + daemon, SECURE=1, in a folder of their own."""
    state_dir = make_state_dir("crypto-test-dagster-ui-")
    with mock.patch.dict(os.environ, {**stack_environment(state_dir), "SECURE": "1"}):
        settings = PlatformSettings.from_env()
        stack = LocalStack(settings)
        try:
            stack.start_database()
            dagster_service(settings).start()
            yield settings
        finally:
            stack.down()
            shutil.rmtree(state_dir, ignore_errors=True)


def spki_hash(certificate: Path) -> str:
    """What ``--ignore-certificate-errors-spki-list`` takes: base64 of the SHA-256 of the key's SubjectPublicKeyInfo."""
    key = x509.load_pem_x509_certificate(certificate.read_bytes()).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture
def browser(secure_dagster: PlatformSettings, tmp_path: Path) -> Iterator[object]:
    """Headless Chromium that trusts the platform server's key (no blanket certificate ignore), with Chrome's
    performance log for the WebSocket events."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("headless Chromium is missing: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    spki = spki_hash(platform_certificates(secure_dagster).server_cert)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1600,1200", f"--user-data-dir={tmp_path / 'profile'}",
                 f"--ignore-certificate-errors-spki-list={spki}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(UI_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def websocket_events(driver) -> list[dict]:
    """Chrome's ``Network.webSocket*`` DevTools events since the last call."""
    messages = (json.loads(entry["message"])["message"] for entry in driver.get_log("performance"))
    return [m for m in messages if m["method"].startswith("Network.webSocket")]


def graphql_websockets(events: list[dict]) -> dict[str, dict]:
    """Per WebSocket to /graphql: its URL, handshake status, and whether it closed or errored."""
    sockets: dict[str, dict] = {}
    for event in events:
        params, method = event["params"], event["method"]
        if method == "Network.webSocketCreated" and params["url"].split("?")[0].endswith("/graphql"):
            sockets[params["requestId"]] = {"url": params["url"], "status": None, "closed": False, "error": None}
        socket = sockets.get(params.get("requestId"))
        if socket is None:
            continue
        if method == "Network.webSocketHandshakeResponseReceived":
            socket["status"] = params["response"]["status"]
        elif method == "Network.webSocketClosed":
            socket["closed"] = True
        elif method == "Network.webSocketFrameError":
            socket["error"] = params.get("errorMessage")
    return sockets


@contextmanager
def answering_the_login_prompt(driver, user: str, password: str) -> Iterator[list[str]]:
    """A DevTools client of the page of its own (chromedriver's command queue would hold it behind a
    navigation waiting for its login): every request goes on, every login challenge gets the credentials
    (yields the list of URLs that asked). WebSockets are not Fetch's: their handshake carries whatever the
    browser itself decides."""
    import websocket

    address = driver.capabilities["goog:chromeOptions"]["debuggerAddress"]
    (page,) = [t for t in requests.get(f"http://{address}/json", timeout=10).json() if t["type"] == "page"]
    connection = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=None, suppress_origin=True)
    connection.send(json.dumps({"id": 1, "method": "Fetch.enable", "params": {"handleAuthRequests": True}}))
    while json.loads(connection.recv()).get("id") != 1:
        pass
    stopping = threading.Event()
    challenged: list[str] = []

    def answer() -> None:
        while not stopping.is_set():
            try:
                raw = connection.recv()
            except (websocket.WebSocketException, OSError):
                return
            if not raw:  # closed
                return
            message = json.loads(raw)
            params = message.get("params", {})
            if message.get("method") == "Fetch.requestPaused":
                reply = {"method": "Fetch.continueRequest", "params": {"requestId": params["requestId"]}}
            elif message.get("method") == "Fetch.authRequired":
                challenged.append(params["request"]["url"])
                reply = {"method": "Fetch.continueWithAuth", "params": {
                    "requestId": params["requestId"], "authChallengeResponse": {
                        "response": "ProvideCredentials", "username": user, "password": password}}}
            else:
                continue
            connection.send(json.dumps({"id": 0, **reply}))

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield challenged
    finally:
        stopping.set()
        connection.close()
        thread.join(timeout=10)


@pytest.mark.timeout(240)
def test_the_ui_renders_and_keeps_its_websocket_open(secure_dagster: PlatformSettings, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    started = time.monotonic()
    base = dagster_url(secure_dagster)
    assert base.startswith("https://")
    events: list[dict] = []
    with answering_the_login_prompt(browser, DAGSTER_UI_USER, dagster_ui_password(secure_dagster)) as challenged:
        try:
            browser.get(f"{base}/assets")
            WebDriverWait(browser, UI_TIMEOUT_S, poll_frequency=1).until(
                lambda driver: "aggregated_1min" in driver.find_element(By.TAG_NAME, "body").text,
                "the Assets page never listed aggregated_1min")
            WebDriverWait(browser, UI_TIMEOUT_S, poll_frequency=0.5).until(
                lambda driver: events.extend(websocket_events(driver)) or any(
                    s["status"] is not None for s in graphql_websockets(events).values()),
                "no WebSocket to /graphql got an answer to its handshake")
            time.sleep(WEBSOCKET_OPEN_S)
        finally:
            events.extend(websocket_events(browser))
            ARTIFACTS.mkdir(exist_ok=True)
            browser.save_screenshot(str(ARTIFACTS / "dagster-assets.png"))
            # The events themselves carry the login (the handshake's Authorization): only the summary is shown.
            print(f"login challenges: {challenged}; WebSockets to /graphql: {graphql_websockets(events)}")
    assert challenged, "the browser was never asked to log in"
    sockets = graphql_websockets(events)
    assert sockets, "the UI opened no WebSocket to /graphql"
    assert all(s["status"] == 101 and not s["closed"] and not s["error"] for s in sockets.values()), sockets
    assert "disconnected" not in browser.find_element(By.TAG_NAME, "body").text.lower()
    print(f"Dagster UI with its WebSocket open in {time.monotonic() - started:.1f} s; sockets: {sockets}")
