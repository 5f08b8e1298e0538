"""Binance's public data files (data.binance.vision): their names, their ``.CHECKSUM`` files, downloads.

Layout: ``{BINANCE_DATA_URL}/data/spot/daily/aggTrades/{SYMBOL}/{SYMBOL}-aggTrades-YYYY-MM-DD.zip`` and
``.../monthly/aggTrades/{SYMBOL}/{SYMBOL}-aggTrades-YYYY-MM.zip``, each beside a ``.zip.CHECKSUM``
holding ``<sha256 hex>  <file name>`` (sha256sum's format).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import urllib.error
import urllib.request
from datetime import date, timedelta
from pathlib import Path

CHUNK_BYTES = 1 << 20
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
DOWNLOAD_TIMEOUT_S = 60


class DataFileError(ValueError):
    """A data file that cannot be trusted or fetched; the message names the file (or URL)."""


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".CHECKSUM")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def expected_sha256(checksum_file: Path) -> str:
    """The digest a ``.CHECKSUM`` file announces (its first word)."""
    text = checksum_file.read_text(encoding="utf-8", errors="replace").strip()
    word = text.split()[0] if text else ""
    if SHA256_HEX.fullmatch(word) is None:
        raise DataFileError(f"{checksum_file}: not a SHA-256 checksum file")
    return word.lower()


def verified_sha256(path: Path) -> str:
    """The file's SHA-256, checked against its ``.CHECKSUM`` when one lies beside it."""
    actual = sha256_of(path)
    announced = checksum_path(path)
    if announced.is_file():
        expected = expected_sha256(announced)
        if actual != expected:
            raise DataFileError(f"{path}: SHA-256 {actual} does not match {announced.name} ({expected})")
    return actual


def parse_period(text: str) -> tuple[date, bool]:
    """``YYYY-MM-DD`` (daily files) or ``YYYY-MM`` (monthly files) → (first day, monthly)."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}", text):
            return date.fromisoformat(f"{text}-01"), True
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return date.fromisoformat(text), False
    except ValueError:
        pass
    raise DataFileError(f"{text!r} is not a day (YYYY-MM-DD) or a month (YYYY-MM)")


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def file_names(symbol: str, start: str, end: str) -> list[tuple[str, str]]:
    """(path under the data URL, file name) of every aggTrades file from ``start`` to ``end`` inclusive.

    Both days → daily files; both months → monthly files.
    """
    first, monthly = parse_period(start)
    last, last_monthly = parse_period(end)
    if monthly != last_monthly:
        raise DataFileError(f"give two days or two months, not {start!r} and {end!r}")
    if last < first:
        raise DataFileError(f"{start} is after {end}")
    kind = "monthly" if monthly else "daily"
    names, day = [], first
    while day <= last:
        stamp = day.strftime("%Y-%m") if monthly else day.isoformat()
        name = f"{symbol}-aggTrades-{stamp}.zip"
        names.append((f"data/spot/{kind}/aggTrades/{symbol}/{name}", name))
        day = _next_month(day) if monthly else day + timedelta(days=1)
    return names


def _fetch(url: str, target: Path) -> None:
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out, CHUNK_BYTES)
    except urllib.error.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise DataFileError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise DataFileError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    partial.replace(target)


def download(base_url: str, symbol: str, start: str, end: str, into: Path) -> list[Path]:
    """Fetches each file and its ``.CHECKSUM`` into ``into`` and verifies it; a file already there and
    matching its checksum is not fetched again. Returns the files in date order."""
    if not base_url.startswith(("https://", "http://")):
        raise DataFileError(f"BINANCE_DATA_URL={base_url!r} must start with https:// or http://")
    into.mkdir(parents=True, exist_ok=True)
    paths = []
    for remote, name in file_names(symbol.upper(), start, end):
        target = into / name
        url = f"{base_url.rstrip('/')}/{remote}"
        _fetch(f"{url}.CHECKSUM", checksum_path(target))
        if not target.is_file() or sha256_of(target) != expected_sha256(checksum_path(target)):
            _fetch(url, target)
        verified_sha256(target)
        paths.append(target)
    return paths
