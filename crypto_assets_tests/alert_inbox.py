"""Where Superset's alerts land in the tests and in ``bench.alerts``: a local webhook receiver and a local SMTP
server (aiosmtpd) on free loopback ports, recording every notification with the moment it arrived."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from local_stack.processes import free_port


@dataclass
class Received:
    at: float
    name: str
    body: dict


@dataclass
class Inbox:
    """What the webhook receiver and the SMTP server got, in arrival order."""

    webhook_url: str = ""
    smtp_port: int = 0
    posts: list[Received] = field(default_factory=list)
    mails: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def posts_for(self, alert: str, since: float = 0.0) -> list[Received]:
        """The webhook POSTs of ``alert`` (named "<alert>: <chart>") that arrived at or after ``since``."""
        with self.lock:
            return [p for p in self.posts if p.name.startswith(f"{alert}:") and p.at >= since]

    def mails_for(self, alert: str, since: float = 0.0) -> list[Received]:
        with self.lock:
            return [m for m in self.mails if f"{alert}:" in m.name and m.at >= since]


def _webhook_receiver(inbox: Inbox) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                payload = json.loads(body)
            except ValueError:  # a report with a CSV file comes as multipart form data
                payload = {"raw": body.decode(errors="replace")}
            with inbox.lock:
                inbox.posts.append(Received(time.time(), str(payload.get("name", "")), payload))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _MailHandler:
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:  # noqa: N802 - aiosmtpd's
        message = message_from_bytes(envelope.content, policy=policy.default)
        with self.inbox.lock:
            self.inbox.mails.append(Received(time.time(), str(message["Subject"]),
                                             {"to": envelope.rcpt_tos, "message": message}))
        return "250 OK"


@contextmanager
def running_inbox() -> Iterator[Inbox]:
    """The receiver at ``inbox.webhook_url`` and the SMTP server at 127.0.0.1:``inbox.smtp_port`` while the
    block runs."""
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    receiver = _webhook_receiver(inbox)
    smtp = Controller(_MailHandler(inbox), hostname="127.0.0.1", port=free_port())
    smtp.start()
    inbox.webhook_url = f"http://127.0.0.1:{receiver.server_address[1]}/alerts"
    inbox.smtp_port = smtp.port
    try:
        yield inbox
    finally:
        smtp.stop()
        receiver.shutdown()
        receiver.server_close()
