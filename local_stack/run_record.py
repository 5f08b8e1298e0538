"""What a server or service was started with: the settings it reads, kept beside its pid file.

``make up`` on a running stack compares them with the settings of the day: a service whose settings
changed is restarted, a server (PostgreSQL, Kafka) is not restarted behind the user's back and ``make up``
says which command applies the change. Secrets are kept as a short SHA-256, never in clear.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from crypto_platform.settings import PlatformSettings

EVERY_SETTING = ("",)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def settings_snapshot(settings: PlatformSettings, watched: tuple[str, ...] = EVERY_SETTING,
                      ignored: tuple[str, ...] = ()) -> dict[str, str]:
    """``{variable: value}`` of the settings whose variable starts with one of ``watched`` and none of
    ``ignored``; secrets as a short hash."""
    snapshot = {}
    for name, spec, secret in PlatformSettings.variables():
        if not spec.env.startswith(watched) or (ignored and spec.env.startswith(ignored)):
            continue
        value = _text(getattr(settings, name))
        snapshot[spec.env] = ("sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]) if secret else value
    return snapshot


def differences(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """``SYMBOLS=BTCUSDT,ETHUSDT (running: BTCUSDT)``, one per changed setting, in variable order."""
    return [f"{variable}={current.get(variable, '')!r} (running: {recorded.get(variable, '')!r})"
            for variable in sorted(recorded.keys() | current.keys())
            if recorded.get(variable) != current.get(variable)]


@dataclass(frozen=True)
class RunRecord:
    """``<state>/run/<name>.settings.json``: written at each start, removed at each stop."""

    path: Path

    def write(self, snapshot: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")

    def read(self) -> dict[str, str] | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def changes(self, current: dict[str, str]) -> list[str]:
        """What differs from the recorded start; nothing when no record was kept (started by older code)."""
        recorded = self.read()
        return [] if recorded is None else differences(recorded, current)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
