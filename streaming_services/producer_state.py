"""The producer's state files: per worker, ``<state>/producer/acked.json`` (``acked-I.json`` for worker I)
holds ``{"source": SOURCE, "acked": {symbol: id}}``, the id up to which Kafka acknowledged every id sent.

The one place that reads and writes the format: the producer, and a point-in-time restore that lowers the
ids to what the restored database holds (``local_stack.stream_rewind``).
"""

from __future__ import annotations

import json
from pathlib import Path

from streaming_services.startup import StartupError


class StateError(StartupError):
    """The producer's state belongs to another SOURCE, or cannot be read; the message says what to do."""


def acked_path(state_dir: Path, worker: int) -> Path:
    return state_dir / "producer" / ("acked.json" if worker == 0 else f"acked-{worker}.json")


def state_files(state_dir: Path) -> list[Path]:
    """Every worker's state file (the worker count may have changed since they were written)."""
    return sorted((state_dir / "producer").glob("acked*.json"))


def read_state_file(path: Path) -> tuple[str, dict[str, int]]:
    """(SOURCE, acknowledged id per symbol) of a state file; ``StateError`` when it is not one of this version."""
    try:
        saved = json.loads(path.read_text())
        return str(saved["source"]), {str(symbol): int(agg_id) for symbol, agg_id in saved["acked"].items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise StateError(f"{path} is not a producer state of this version (with its SOURCE); remove it"
                         " and the market data, or use a fresh STATE_DIR, then start again") from None


def write_state_file(path: Path, source: str, acked: dict[str, int]) -> None:
    """Atomically: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps({"source": source, "acked": acked}))
    partial.replace(path)


def load_acked_ids(path: Path, symbols: tuple[str, ...], source: str) -> dict[str, int]:
    """This worker's acknowledged ids: its own file for its symbols; a symbol it got when PRODUCER_WORKERS
    changed comes from the sibling file that has it (the highest, if several), so nothing is skipped.
    Every file must belong to ``source`` (``StateError`` otherwise: sources never mix)."""
    def read(file: Path) -> dict[str, int]:
        if not file.exists():
            return {}
        saved_source, acked = read_state_file(file)
        if saved_source != source:
            raise StateError(f"{file} holds the positions of SOURCE={saved_source}, not SOURCE={source}: sources"
                             " never mix; use another STATE_DIR (or `make clean`) before switching SOURCE")
        return acked

    inherited: dict[str, int] = {}
    for sibling in state_files(path.parent.parent):
        if sibling != path:
            for symbol, agg_id in read(sibling).items():
                if symbol in symbols:
                    inherited[symbol] = max(agg_id, inherited.get(symbol, agg_id))
    own = {symbol: agg_id for symbol, agg_id in read(path).items() if symbol in symbols}
    return {**inherited, **own}
