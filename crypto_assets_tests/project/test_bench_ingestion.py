"""``bench.ingestion``'s arithmetic: the CPU per row of each part of the machine between two snapshots."""

from __future__ import annotations

import pytest

from bench.ingestion import cpu_per_row_us


def test_cpu_per_row_counts_new_processes_from_zero_and_sums_each_part() -> None:
    before = {("PostgreSQL", 10): 1.0, ("PostgreSQL", 12): 3.0, ("Kafka", 20): 5.0}
    after = {("consumers", 1): 1.2, ("consumers", 2): 0.8, ("PostgreSQL", 10): 1.5, ("PostgreSQL", 11): 0.5,
             ("Kafka", 20): 5.2}
    assert cpu_per_row_us(before, after, 100_000) == pytest.approx(
        {"consumers": 20.0, "PostgreSQL": 10.0, "Kafka": 2.0})
