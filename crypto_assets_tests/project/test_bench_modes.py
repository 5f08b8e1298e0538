"""``--modes`` of the benchmarks: which modes are accepted, and the secure/plain verdict against issue 14's goal."""

from __future__ import annotations

import argparse

import pytest

from bench.modes import Figure, comparison, mode_list


def test_modes_are_plain_and_secure_each_once() -> None:
    assert mode_list("plain, secure") == ["plain", "secure"]
    assert mode_list("secure,plain") == ["secure", "plain"]
    for raw in ("", "plain,plain", "tls"):
        with pytest.raises(argparse.ArgumentTypeError):
            mode_list(raw)


def test_verdict_holds_throughput_and_latency_to_25_percent_and_skips_unjudged_figures() -> None:
    plain = {"rate": Figure(100.0, True), "p99 ms": Figure(10.0, False), "stage µs": Figure(1.0, False, judged=False)}
    within = {"rate": Figure(76.0, True), "p99 ms": Figure(12.4, False), "stage µs": Figure(9.0, False, judged=False)}
    lines = comparison({"plain": plain, "secure": within})
    assert len(lines) == 5 and "0.76" in lines[1] and "(not judged)" in lines[3]
    assert lines[-1].endswith("within 25% of plaintext on all 2 judged figures")
    slower = {**within, "rate": Figure(74.0, True), "p99 ms": Figure(12.6, False)}
    assert comparison({"plain": plain, "secure": slower})[-1].endswith(
        "misses the 25% goal on 2 of 2 judged figures (secure/plain): rate 0.74; p99 ms 1.26")
