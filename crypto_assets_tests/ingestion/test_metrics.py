"""A histogram observed a batch at a time exposes what ``prometheus_client.Histogram`` would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streaming_services.metrics import BatchHistogram

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 60)


def test_batches_expose_the_series_of_one_observe_per_value() -> None:
    reference_registry, batch_registry = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("latency_seconds", "help", buckets=BUCKETS, registry=reference_registry)
    batched = BatchHistogram("latency_seconds", "help", BUCKETS, registry=batch_registry)
    batches = [[0.0, 0.01, 0.02, 1, 1.5], [], [61.0, 0.15, 60]]
    for values in batches:
        for value in values:
            reference.observe(value)
        batched.observe_all(values)
    expected = [line for line in generate_latest(reference_registry).decode().splitlines() if "_created" not in line]
    assert generate_latest(batch_registry).decode().splitlines() == expected
