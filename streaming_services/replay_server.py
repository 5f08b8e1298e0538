"""``ReplayServer``: Binance's Spot market-stream protocol on loopback, fed by recorded files or a synthetic market.

The producer talks to it exactly as to Binance (only the URL differs): ``/ws/<stream>`` and
``/stream?streams=a/b`` WebSockets (or ``/ws``, ``/stream`` and ``SUBSCRIBE`` messages) with
``<symbol>@aggTrade`` events and ``<symbol>@kline_1m`` closing klines (``x: true``, sent as each minute
closes, with or without trades), pings every 20 s, a connection lifetime announced by ``serverShutdown``,
Binance's limits and error frames, and ``GET /api/v3/aggTrades`` for backfill with Binance's parameter rules.

The market's clock starts when the first client subscribes and is kept in ``<state>/replay/anchor.json``:
after a restart the server serves the same market, and trades that "happened" while it was down are
available over REST, as on the real exchange. The synthetic market keeps the last hour of trades for
REST (bounded memory however long it runs) and checkpoints its walks, so a restart regenerates at most
that hour, the same trades with the same consecutive ids. The market itself (timeline, files, synthetic walk)
is ``market.py``; this module is the aiohttp server and the WebSocket fault plan tests use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from crypto_platform.logs import configure_logging
from crypto_platform.settings import PlatformSettings, SettingsError
from streaming_services.feeds import (
    AggTrade,
    FeedError,
    Kline,
)
from streaming_services.market import REST_MAX_WINDOW_MS, MarketTimeline, now_ms
from streaming_services.startup import StartupError, port_taken

MAX_STREAMS_PER_CONNECTION = 1024
MAX_INCOMING_PER_SECOND = 5
MAX_URL_BYTES = 64 * 1024  # 1,024 stream names fit in a URL, as on Binance
REST_DEFAULT_LIMIT = 500
REST_MAX_LIMIT = 1000
TICK_S = 0.02
FAST_BATCH = 5000

PUBLISHER = web.AppKey("publisher", asyncio.Task)

log = logging.getLogger(__name__)


@dataclass
class FaultPlan:
    """Faults injected on the WebSocket, for tests; the default plan injects none.

    The send loop asks ``drops`` before each event and ``after_frame`` after each frame, nothing more.
    REST always keeps serving every trade, so every dropped or lost trade can be healed.
    """

    close_after_frames: int | None = None
    stall_after_frames: int | None = None
    malformed_every: int | None = None
    skip_ids: dict[str, tuple[int, int]] = field(default_factory=dict)

    def drops(self, event: AggTrade | Kline) -> bool:
        span = self.skip_ids.get(event.symbol) if isinstance(event, AggTrade) else None
        return span is not None and span[0] <= event.agg_id <= span[1]

    async def after_frame(self, subscriber: Subscriber, event: AggTrade | Kline) -> bool:
        """Applies the faults due after a frame; True when it closed the connection."""
        ws, sent = subscriber.ws, subscriber.frames_sent
        if self.malformed_every and sent % self.malformed_every == 0:
            await ws.send_str('{"stream":"' + event.symbol.lower() + '@aggTrade","data":{"e":"aggTrade","p":')
        if self.stall_after_frames and sent >= self.stall_after_frames:
            subscriber.stalled = True
        if self.close_after_frames and sent >= self.close_after_frames:
            await ws.close(code=1011, message=b"Injected disconnect")
            return True
        return False


@dataclass
class ReplayConfig:
    symbols: tuple[str, ...]
    files: tuple[Path, ...] = ()
    speed: float = 1.0
    retime: bool = True
    host: str = "127.0.0.1"
    port: int = 9443
    state_dir: Path | None = None
    ping_interval_s: float = 20.0
    pong_timeout_s: float = 60.0
    lifetime_s: float = 24 * 3600.0
    synthetic_trades_per_second: float = 5.0
    faults: FaultPlan = field(default_factory=FaultPlan)

    @classmethod
    def from_settings(cls, settings: PlatformSettings) -> ReplayConfig:
        return cls(symbols=settings.symbols, files=tuple(Path(f) for f in settings.replay_files),
                   speed=settings.replay_speed, retime=settings.replay_retime, host=settings.bind_host,
                   port=settings.replay_port, state_dir=settings.state_dir / "replay")


def _stream_name(event: AggTrade | Kline) -> str:
    return f"{event.symbol.lower()}@aggTrade" if isinstance(event, AggTrade) else f"{event.symbol.lower()}@kline_1m"


REQUEST_ID = re.compile(r"[A-Za-z0-9]{1,36}")


def subscription_answer(streams: set[str], request: Any) -> dict[str, Any]:
    """Applies one live-subscription request to ``streams`` (in place) and returns Binance's answer frame:
    ``{"result": …, "id": …}``, or ``{"error": {"code": 2, "msg": …}, "id": …}`` for an invalid request
    (Binance's codes: 2 invalid request, 3 invalid JSON), leaving ``streams`` as it was."""
    request_id = request.get("id") if isinstance(request, dict) else None

    def error(msg: str) -> dict[str, Any]:
        return {"error": {"code": 2, "msg": f"Invalid request: {msg}"}, "id": request_id}

    if not isinstance(request, dict):
        return {"error": {"code": 3, "msg": "Invalid JSON: expected an object"}, "id": None}
    if not (request_id is None or (isinstance(request_id, int) and not isinstance(request_id, bool)
                                   and -2**63 <= request_id < 2**63)
            or (isinstance(request_id, str) and REQUEST_ID.fullmatch(request_id))):
        request_id = None
        return error("request ID must be an unsigned integer or an alphanumeric string of at most 36 characters")
    unknown = sorted(set(request) - {"method", "params", "id"})
    if unknown:
        return error(f"unknown field {unknown[0]!r}")
    method = request.get("method")
    if method is None:
        return error("missing field `method`")
    if method == "LIST_SUBSCRIPTIONS":
        return {"result": sorted(streams), "id": request_id}
    if method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
        return error(f"unknown variant {json.dumps(method)[:40]}, expected one of SUBSCRIBE, UNSUBSCRIBE,"
                     " LIST_SUBSCRIPTIONS")
    params = request.get("params")
    if not isinstance(params, list) or not all(isinstance(p, str) and p.strip() for p in params):
        return error("params must be a list of stream names")
    names = {p.strip().lower() for p in params}
    if method == "SUBSCRIBE":
        if len(streams | names) > MAX_STREAMS_PER_CONNECTION:
            return error(f"too many streams: at most {MAX_STREAMS_PER_CONNECTION} per connection")
        streams |= names
    else:
        streams -= names
    return {"result": None, "id": request_id}


class BinanceError(Exception):
    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


DIGITS = re.compile(r"[0-9]{1,20}")  # ASCII digits only: no sign, underscore, space or other script's digits


def _int_param(query: Any, name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if DIGITS.fullmatch(raw) is None or int(raw) > 2**63 - 1:
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
    return int(raw)


@dataclass(eq=False)
class Subscriber:
    """One WebSocket connection: its streams, whether frames are wrapped, and its queue of trades."""

    ws: web.WebSocketResponse
    combined: bool
    streams: set[str]
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    frames_sent: int = 0
    last_pong: float = field(default_factory=time.monotonic)
    stalled: bool = False


class ReplayServer:
    """The aiohttp application; ``serve_forever`` for the CLI, ``start_in_thread`` for tests and benchmarks."""

    def __init__(self, config: ReplayConfig) -> None:
        self.config = config
        self.timeline = MarketTimeline(config)
        self.subscribers: set[Subscriber] = set()
        self.connections_total = 0
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._anchor_path = config.state_dir / "anchor.json" if config.state_dir else None
        self._saved_checkpoint: dict[str, Any] | None = None
        self._restore_anchor()

    def _restore_anchor(self) -> None:
        if self._anchor_path and self._anchor_path.exists():
            saved = json.loads(self._anchor_path.read_text())
            self.timeline.resume(saved["anchor_ms"], saved.get("synthetic", {}), now_ms())
            self._saved_checkpoint = saved.get("synthetic", {})
            log.info("market clock restored", extra={"anchor_ms": self.timeline.anchor_ms})

    def _save_clock(self) -> None:
        """anchor.json: the clock, and the synthetic walks' oldest checkpoints (rewritten when they move)."""
        checkpoint = self.timeline.checkpoint()
        if self._anchor_path is None or checkpoint == self._saved_checkpoint:
            return
        self._anchor_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self._anchor_path.with_suffix(".tmp")
        partial.write_text(json.dumps({"anchor_ms": self.timeline.anchor_ms, "synthetic": checkpoint}))
        partial.replace(self._anchor_path)
        self._saved_checkpoint = checkpoint

    def _start_clock(self) -> None:
        if self.timeline.anchor_ms is not None:
            return
        self.timeline.start(now_ms())
        self._save_clock()
        log.info("market clock started", extra={"source": self.timeline.source, "files": len(self.config.files),
                                                "synthetic": ",".join(self.timeline.synthetic) or "none"})

    def app(self) -> web.Application:
        app = web.Application(handler_args={"max_line_size": MAX_URL_BYTES})
        app.router.add_get("/ws", self.handle_raw)
        app.router.add_get("/ws/{streams:.+}", self.handle_raw)
        app.router.add_get("/stream", self.handle_combined)
        app.router.add_get("/api/v3/aggTrades", self.handle_agg_trades)
        app.router.add_get("/api/v3/ping", self.handle_ping)
        app.router.add_get("/api/v3/time", self.handle_time)
        app.on_startup.append(self._on_startup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        app[PUBLISHER] = asyncio.create_task(self._publish_loop())

    async def handle_ping(self, _: web.Request) -> web.Response:
        return web.json_response({})

    async def handle_time(self, _: web.Request) -> web.Response:
        return web.json_response({"serverTime": now_ms()})

    async def _publish_loop(self) -> None:
        while True:
            limit = FAST_BATCH if self.config.speed == 0 else None
            wall_ms = now_ms()
            for event in [*self.timeline.advance(wall_ms, limit), *self.timeline.closed_klines(wall_ms)]:
                stream = _stream_name(event).lower()
                for subscriber in self.subscribers:
                    if stream in subscriber.streams:
                        subscriber.queue.put_nowait(event)
            if self.timeline.anchor_ms is not None:
                self._save_clock()
            await asyncio.sleep(0 if self.config.speed == 0 and self.timeline.files_pending else TICK_S)

    async def handle_agg_trades(self, request: web.Request) -> web.Response:
        try:
            symbol = request.query.get("symbol", "").upper()
            if symbol not in self.timeline.published:
                raise BinanceError(-1121, "Invalid symbol.")
            limit = _int_param(request.query, "limit")
            limit = REST_DEFAULT_LIMIT if limit is None else limit
            if not 1 <= limit <= REST_MAX_LIMIT:
                raise BinanceError(-1130, "Data sent for parameter 'limit' is not valid.")
            start, end = _int_param(request.query, "startTime"), _int_param(request.query, "endTime")
            if start is not None and end is not None and end - start > REST_MAX_WINDOW_MS:
                raise BinanceError(-1127, "More than 1 hours between startTime and endTime.")
            rows = self.timeline.agg_trades(symbol, _int_param(request.query, "fromId"), start, end, limit)
        except BinanceError as exc:
            return web.json_response({"code": exc.code, "msg": exc.msg}, status=exc.status)
        return web.json_response([trade.rest_row() for trade in rows])

    async def handle_raw(self, request: web.Request) -> web.WebSocketResponse:
        return await self._serve(request, request.match_info.get("streams", "").split("/"), combined=False)

    async def handle_combined(self, request: web.Request) -> web.WebSocketResponse:
        return await self._serve(request, request.query.get("streams", "").split("/"), combined=True)

    async def _serve(self, request: web.Request, names: Iterable[str], combined: bool) -> web.WebSocketResponse:
        streams = {name.strip().lower() for name in names if name.strip()}
        ws = web.WebSocketResponse(autoping=False, max_msg_size=64 * 1024)
        await ws.prepare(request)
        if len(streams) > MAX_STREAMS_PER_CONNECTION:
            await ws.close(code=1008, message=b"Too many streams")
            return ws
        subscriber = Subscriber(ws, combined, streams)
        self.subscribers.add(subscriber)
        self.connections_total += 1
        self._start_clock()
        log.info("client connected", extra={"streams": len(streams), "combined": combined})
        sender = asyncio.create_task(self._send_loop(subscriber))
        pinger = asyncio.create_task(self._ping_loop(subscriber))
        try:
            await self._receive_loop(subscriber)
        finally:
            sender.cancel()
            pinger.cancel()
            self.subscribers.discard(subscriber)
            if not ws.closed:
                await ws.close()
            log.info("client disconnected", extra={"frames": subscriber.frames_sent})
        return ws

    async def _receive_loop(self, subscriber: Subscriber) -> None:
        window_start, count = time.monotonic(), 0
        async for message in subscriber.ws:
            if message.type == WSMsgType.PING:
                await subscriber.ws.pong(message.data)
            elif message.type == WSMsgType.PONG:
                subscriber.last_pong = time.monotonic()
            elif message.type == WSMsgType.TEXT:
                if time.monotonic() - window_start >= 1:
                    window_start, count = time.monotonic(), 0
                count += 1
                if count > MAX_INCOMING_PER_SECOND:
                    await subscriber.ws.close(code=1008, message=b"Too many requests")
                    return
                await self._handle_request(subscriber, message.data)
            elif message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                return

    async def _handle_request(self, subscriber: Subscriber, text: str) -> None:
        """Binance's live subscription methods: SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS; anything else
        is answered with an error frame (``{"error": {"code", "msg"}, "id"}``) and the connection stays."""
        try:
            request = json.loads(text)
        except ValueError as exc:
            await subscriber.ws.send_json({"error": {"code": 3, "msg": f"Invalid JSON: {exc}"}, "id": None})
            return
        answer = subscription_answer(subscriber.streams, request)
        await subscriber.ws.send_json(answer)

    async def _send_loop(self, subscriber: Subscriber) -> None:
        faults, ws = self.config.faults, subscriber.ws
        connected = time.monotonic()
        while True:
            if subscriber.queue.empty():  # wait_for costs a task: only when there is nothing to send
                try:
                    trade = await asyncio.wait_for(subscriber.queue.get(), timeout=1.0)
                except TimeoutError:
                    trade = None
            else:
                trade = subscriber.queue.get_nowait()
            if time.monotonic() - connected >= self.config.lifetime_s:
                await ws.send_json({"e": "serverShutdown", "E": now_ms()})
                await ws.close(code=1001, message=b"Connection lifetime reached")
                return
            if trade is None or subscriber.stalled or faults.drops(trade):
                continue
            if isinstance(trade, AggTrade):
                payload = trade.payload_json(now_ms())
            else:
                payload = json.dumps(trade.payload(now_ms()), separators=(",", ":"))
            frame = f'{{"stream":"{_stream_name(trade)}","data":{payload}}}' if subscriber.combined else payload
            await ws.send_str(frame)
            subscriber.frames_sent += 1
            if await faults.after_frame(subscriber, trade):
                return

    async def _ping_loop(self, subscriber: Subscriber) -> None:
        while True:
            await asyncio.sleep(self.config.ping_interval_s)
            if subscriber.stalled:
                continue
            if time.monotonic() - subscriber.last_pong > self.config.pong_timeout_s:
                log.info("client dropped: no pong", extra={"timeout_s": self.config.pong_timeout_s})
                await subscriber.ws.close(code=1008, message=b"Pong timeout")
                return
            await subscriber.ws.ping(str(now_ms()).encode())

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.config.port = port
        log.info("replay server listening", extra={"host": self.config.host, "port": port,
                                                    "symbols": ",".join(self.timeline.published)})
        return f"ws://{self.config.host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def start_in_thread(self) -> tuple[str, str]:
        """Runs the server on a thread of its own; returns (WebSocket base URL, REST base URL)."""
        ready = threading.Event()
        urls: list[str] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            urls.append(self._loop.run_until_complete(self.start()))
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=run, name="replay-server", daemon=True).start()
        ready.wait(30)
        return urls[0], urls[0].replace("ws://", "http://")

    def stop_thread(self) -> None:
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)

    def call(self, function) -> Any:
        """Runs ``function()`` on the server's loop (tests change faults or read state safely)."""
        async def invoke() -> Any:
            return function()
        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(30)


async def _serve_forever(server: ReplayServer) -> None:
    try:
        await server.start()
    except OSError as exc:
        raise port_taken("REPLAY_PORT", server.config.host, server.config.port, exc) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="replay-server", description="Binance-compatible market replay on loopback.")
    parser.add_argument("--lifetime-s", type=float, help="connection lifetime (Binance: 86400)")
    args = parser.parse_args(argv)
    try:
        settings = PlatformSettings.from_env()
        config = ReplayConfig.from_settings(settings)
        if args.lifetime_s:
            config.lifetime_s = args.lifetime_s
        configure_logging(settings.log_level)
        server = ReplayServer(config)
    except (SettingsError, FeedError) as exc:
        print(f"replay-server: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve_forever(server))
    except StartupError as exc:
        print(f"replay-server: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
