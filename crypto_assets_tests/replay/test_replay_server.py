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
    [("symbol=NOPE", -1121), ("symbol=BTCUSDT&limit=1001", -1130), ("symbol=BTCUSDT&fromId=x", -1100),
     ("symbol=BTCUSDT&startTime=0&endTime=3600001", -1127),
     # Failed on the old code, which answered these with trades (int() takes them):
     ("symbol=BTCUSDT&limit=0", -1130), ("symbol=BTCUSDT&limit=1_0", -1100),
     ("symbol=BTCUSDT&limit=%D9%A1%D9%A0", -1100),
     ("symbol=BTCUSDT&fromId=-1", -1100), ("symbol=BTCUSDT&fromId=%2B5", -1100), ("symbol=BTCUSDT&fromId=%205", -1100),
     ("symbol=BTCUSDT&fromId=3071245_454", -1100)],
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


def _answers(ws: websocket.WebSocket, requests: list[object]) -> list[dict]:
    """Sends each request (an object as JSON, a str as is) and returns the answer frames, skipping events."""
    answers = []
    for request in requests:
        ws.send(request if isinstance(request, str) else json.dumps(request))
        while True:
            message = json.loads(ws.recv())
            if "result" in message or "error" in message:
                answers.append(message)
                break
        time.sleep(0.25)  # Binance's limit: 5 incoming messages a second
    return answers


@pytest.mark.parametrize("path", ["/ws", "/stream"])
def test_a_client_subscribes_by_message_on_a_bare_connection(server, path: str) -> None:
    """Binance's live subscribing on ``/ws`` or ``/stream`` with no stream in the path, and error frames
    for bad requests with the connection kept. Failed on the old code: /ws was a 404, non-list params
    closed the socket with a TypeError, and SUBSCRIBE bypassed the 1,024-stream cap."""
    _, ws_url, _ = server
    ws = websocket.create_connection(f"{ws_url}{path}", timeout=10)
    subscribed = _answers(ws, [{"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 1}])
    deadline = time.monotonic() + 10
    event = {}
    while time.monotonic() < deadline and event.get("e") != "aggTrade":
        message = json.loads(ws.recv())
        event = message.get("data", message)
    answers = _answers(ws, [
        {"method": "LIST_SUBSCRIPTIONS", "id": "list1"},
        {"method": "SUBSCRIBE", "params": "btcusdt@aggTrade", "id": 2},
        {"method": "SUBSCRIBE", "params": [f"s{i}usdt@aggTrade" for i in range(1024)], "id": 3},
        {"method": "SUBSCRIBE", "params": ["ethusdt@aggTrade"], "id": True},
        {"method": "FETCH", "params": [], "id": 4},
        "{not json",
        {"method": "UNSUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 5},
        {"method": "LIST_SUBSCRIPTIONS", "id": 6},
    ])
    ws.close()
    assert subscribed == [{"result": None, "id": 1}]
    assert event["e"] == "aggTrade" and event["s"] == "BTCUSDT"
    assert answers[0] == {"result": ["btcusdt@aggtrade"], "id": "list1"}
    assert [(a["error"]["code"], a["id"]) for a in answers[1:6]] == [(2, 2), (2, 3), (2, None), (2, 4), (3, None)]
    assert "list of stream names" in answers[1]["error"]["msg"]
    assert "at most 1024" in answers[2]["error"]["msg"]
    assert answers[4]["error"]["msg"].startswith("Invalid request: unknown variant")
    assert answers[5]["error"]["msg"].startswith("Invalid JSON")
    assert answers[6:] == [{"result": None, "id": 5}, {"result": [], "id": 6}]


def test_closing_klines_come_every_minute_also_for_a_quiet_symbol(shared_data: Path) -> None:
    """At 600x, the 7-minute recording is through in about a second; klines keep closing after it, empty.
    Failed on the old code: there was no kline stream."""
    from streaming_services.feeds import read_binance_file

    trades = read_binance_file(shared_data / BTC_2023)
    replay = ReplayServer(ReplayConfig(symbols=("BTCUSDT",), files=(shared_data / BTC_2023,), port=0, speed=600,
                                       retime=False))
    ws_url, _ = replay.start_in_thread()
    try:
        ws = websocket.create_connection(f"{ws_url}/ws/btcusdt@kline_1m", timeout=10)
        klines = []
        while len(klines) < 12:
            klines.append(json.loads(ws.recv())["k"])
        ws.close()
    finally:
        replay.stop_thread()
    assert all(k["x"] is True and k["i"] == "1m" and k["T"] == k["t"] + 59_999 for k in klines)
    assert [k["t"] for k in klines] == list(range(klines[0]["t"], klines[0]["t"] + 12 * 60_000, 60_000))
    for kline in klines:
        minute = [t for t in trades if kline["t"] <= t.time_ms <= kline["T"]]
        assert kline["n"] == len(minute)
        assert (kline["f"], kline["L"]) == ((minute[0].first_id, minute[-1].last_id) if minute else (-1, -1))
    assert klines[-1]["n"] == 0 and klines[-1]["c"] == trades[-1].price and klines[-1]["v"] == "0.00000000"


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
    started = time.monotonic()  # before connect: the server's pong clock starts during the handshake
    ws.connect(f"{ws_url}/ws/btcusdt@aggTrade", timeout=5)
    while True:
        frame = ws.recv_frame()  # raw frames: websocket-client does not answer pings here
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            break
    assert 1.0 < time.monotonic() - started < 10
