"""The replay server speaks Binance's Spot market-stream protocol: frames, REST, pings, lifetime, limits."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket

from streaming_services.replay_server import ReplayConfig, ReplayServer

BTC_2023 = "spot_BTCUSDT_2023-04-05/spot_BTCUSDT_trades_2023-04-04T235959_to_2023-04-05T000654.csv"
AGG_TRADE_FIELDS = {"e": str, "E": int, "s": str, "a": int, "p": str, "q": str, "f": int, "l": int, "T": int,
                    "m": bool, "M": bool}


@pytest.fixture
def server(shared_data: Path, request) -> Iterator[tuple[ReplayServer, str, str]]:
    options = getattr(request, "param", {})
    replay = ReplayServer(ReplayConfig(symbols=("BTCUSDT", "ETHUSDT"), files=(shared_data / BTC_2023,), port=0,
                                       **options))
    ws_url, rest_url = replay.start_in_thread()
    yield replay, ws_url, rest_url
    replay.stop_thread()


def _get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.mark.parametrize("server", [{"speed": 0}], indirect=True)
def test_combined_stream_frames_and_rest_backfill_have_binances_shape(server) -> None:
    replay, ws_url, rest_url = server
    ws = websocket.create_connection(f"{ws_url}/stream?streams=btcusdt@aggTrade", timeout=5)
    frame = json.loads(ws.recv())
    ws.close()
    assert frame["stream"] == "btcusdt@aggTrade"
    assert {k: type(v) for k, v in frame["data"].items()} == AGG_TRADE_FIELDS
    assert frame["data"]["a"] == 3071245454 and frame["data"]["p"] == "28165.47000000"

    time.sleep(0.5)
    status, rows = _get(f"{rest_url}/api/v3/aggTrades?symbol=BTCUSDT&fromId=3071245500&limit=3")
    assert status == 200 and [r["a"] for r in rows] == [3071245500, 3071245501, 3071245502]
    assert set(rows[0]) == {"a", "p", "q", "f", "l", "T", "m", "M"}
    start, end = rows[0]["T"], rows[2]["T"]
    status, rows = _get(f"{rest_url}/api/v3/aggTrades?symbol=BTCUSDT&startTime={start}&endTime={end}")
    assert status == 200 and all(start <= r["T"] <= end for r in rows)
    assert {3071245500, 3071245501, 3071245502} <= {r["a"] for r in rows}
    assert _get(f"{rest_url}/api/v3/ping") == (200, {})


@pytest.mark.parametrize(
    ("query", "code"),
    [("symbol=NOPE", -1121), ("symbol=BTCUSDT&limit=1001", -1100), ("symbol=BTCUSDT&fromId=x", -1100),
     ("symbol=BTCUSDT&startTime=0&endTime=3600001", -1127)],
)
def test_rest_errors_as_binance_answers_them(server, query: str, code: int) -> None:
    status, body = _get(f"{server[2]}/api/v3/aggTrades?{query}")
    assert status == 400 and body["code"] == code and body["msg"]


def test_raw_stream_and_live_subscription(server) -> None:
    _, ws_url, _ = server
    ws = websocket.create_connection(f"{ws_url}/ws/ethusdt@aggTrade", timeout=5)
    ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 1}))
    seen, reply = set(), None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (reply is None or seen != {"BTCUSDT", "ETHUSDT"}):
        message = json.loads(ws.recv())
        if message.get("id") == 1:
            reply = message
        elif message.get("e") == "aggTrade":
            seen.add(message["s"])
    ws.close()
    assert reply == {"result": None, "id": 1}
    assert seen == {"BTCUSDT", "ETHUSDT"}


def test_too_many_streams_or_requests_close_the_connection(server) -> None:
    _, ws_url, _ = server
    streams = "/".join(f"s{i}usdt@aggTrade" for i in range(1025))
    ws = websocket.create_connection(f"{ws_url}/stream?streams={streams}", timeout=5)
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    ws = websocket.create_connection(f"{ws_url}/ws/btcusdt@aggTrade", timeout=5)
    for request_id in range(7):
        try:
            ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": request_id}))
        except (websocket.WebSocketConnectionClosedException, BrokenPipeError):
            break
    with pytest.raises((websocket.WebSocketConnectionClosedException, websocket.WebSocketTimeoutException)):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ws.recv()


@pytest.mark.parametrize("server", [{"lifetime_s": 1.5, "ping_interval_s": 0.3, "pong_timeout_s": 60}], indirect=True)
def test_pings_then_server_shutdown_at_the_end_of_the_lifetime(server) -> None:
    _, ws_url, _ = server
    ws = websocket.create_connection(f"{ws_url}/ws/btcusdt@aggTrade", timeout=5)
    opcodes, events = [], []
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        opcodes.append(opcode)
        if opcode == websocket.ABNF.OPCODE_TEXT:
            events.append(json.loads(frame.data)["e"])
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
    assert websocket.ABNF.OPCODE_PING in opcodes
    assert events[-1] == "serverShutdown"


@pytest.mark.parametrize("server", [{"ping_interval_s": 0.2, "pong_timeout_s": 1.0}], indirect=True)
def test_a_client_that_never_pongs_is_dropped(server) -> None:
    _, ws_url, _ = server
    ws = websocket.WebSocket(skip_utf8_validation=True)
    ws.connect(f"{ws_url}/ws/btcusdt@aggTrade", timeout=5)
    started = time.monotonic()
    while True:
        frame = ws.recv_frame()  # raw frames: websocket-client does not answer pings here
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            break
    assert 0.9 < time.monotonic() - started < 10
