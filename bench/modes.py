"""The same benchmark with SECURE=0 and SECURE=1 in one invocation, and how far secure is from plaintext
(issue 14's goal: throughput and latency with SECURE=1 within 25 % of plaintext)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

MODES = {"plain": "0", "secure": "1"}  # mode -> SECURE
GOAL = 0.25  # secure may be this much slower than plain


def mode_list(raw: str) -> list[str]:
    """``--modes``: a comma list of plain, secure."""
    modes = [mode.strip() for mode in raw.split(",") if mode.strip()]
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes or len(set(modes)) != len(modes):
        raise argparse.ArgumentTypeError(f"{raw!r}: a comma list of {', '.join(MODES)}, each once")
    return modes


@dataclass(frozen=True)
class Figure:
    value: float
    higher_is_better: bool  # a throughput; else a latency
    judged: bool = True  # else shown to say where time goes (a stage's cost), not held to the goal

    def within_goal(self, plain: Figure) -> bool:
        if self.higher_is_better:
            return self.value >= plain.value * (1 - GOAL)
        return self.value <= plain.value * (1 + GOAL)


def side_by_side(left_name: str, left: dict[str, Figure], right_name: str, right: dict[str, Figure]) -> list[str]:
    """One table with each figure of both runs and right/left."""
    names = [name for name in left if name in right]
    rows = [f"{name + ('' if left[name].judged else ' (not judged)'):<52} {left[name].value:>12,.1f} "
            f"{right[name].value:>12,.1f} {_ratio(right[name], left[name]):>8.2f}" for name in names]
    return [f"{'figure':<52} {left_name:>12} {right_name:>12} {'ratio':>8}", *rows]


def _ratio(figure: Figure, base: Figure) -> float:
    return figure.value / base.value if base.value else float("nan")


def comparison(results: dict[str, dict[str, Figure]]) -> list[str]:
    """The table of both modes (secure/plain), then one verdict line against the goal."""
    plain, secure = results["plain"], results["secure"]
    judged = [name for name in plain if name in secure and plain[name].judged]
    missed = [f"{name} {_ratio(secure[name], plain[name]):.2f}" for name in judged
              if not secure[name].within_goal(plain[name])]
    verdict = (f"SECURE=1 within {GOAL:.0%} of plaintext on all {len(judged)} judged figures" if not missed else
               f"SECURE=1 misses the {GOAL:.0%} goal on {len(missed)} of {len(judged)} judged figures "
               f"(secure/plain): {'; '.join(missed)}")
    return [*side_by_side("plain", plain, "secure", secure),
            f"verdict (throughput ≥ {1 - GOAL:.2f} × plain, latency ≤ {1 + GOAL:.2f} × plain): {verdict}"]
