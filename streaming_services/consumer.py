"""Kafka consumer → PostgreSQL ``stock.real_time_prices``, exactly once in effect.

Each polled batch is validated; valid trades and the dead letters of invalid messages are written in one
PostgreSQL transaction, idempotently (``ON CONFLICT DO NOTHING`` on (symbol, agg_trade_id) and on the
dead letter's (topic, partition, offset)); Kafka offsets are committed only after PostgreSQL committed.
A crash anywhere replays at most the uncommitted batch, which the unique keys absorb. The same transaction
records where each partition's writes reached (``stock.consumer_offsets``), which a point-in-time restore
rewinds the group to.

Valid trades are also judged against what is stored (``admission.py``): conflicting duplicates, another
source, ids far from the symbol's range and late trades become dead letters with their reason. Market
clock messages update ``stock.market_clock`` in the same transaction as the trades before them.
This module is the poll loop; ``postgres_sink.py`` is the PostgreSQL writer.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Gauge, Histogram

from crypto_platform.credentials import INGEST_WRITER, KAFKA_CONSUMER, kafka_security, role_database_url
from crypto_platform.logs import configure_logging
from crypto_platform.retrying import retry_while_unavailable
from crypto_platform.settings import WORKER_PORT_STRIDE, PlatformSettings, SettingsError
from streaming_services.admission import DEFAULT_LIMITS, Limits
from streaming_services.kafka_records import install_fast_records
from streaming_services.messages import InvalidMessage, TradeMessage, parse_message
from streaming_services.metrics import BatchHistogram
from streaming_services.postgres_sink import CONNECTION_ERRORS, Accepted, Rejected, TradeWriter, WriteOutcome
from streaming_services.startup import StartupError, start_metrics, wait_for_kafka, worker_argument

RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 10.0
POLL_RETRY_S = 1.0
TOPIC_RETRY_S = 1.0

log = logging.getLogger(__name__)

RESULTS = Counter("consumer_messages_total", "Messages handled", ["result"])
BATCH_SIZE = Histogram("consumer_batch_size", "Messages per transaction",
                       buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000))
DB_RETRIES = Counter("consumer_db_retries_total", "Transactions retried because PostgreSQL was unavailable")
LAG = Gauge("consumer_lag", "Messages behind the partition's end", ["partition"])
END_TO_END = BatchHistogram("consumer_end_to_end_latency_seconds", "Trade time to PostgreSQL commit",
                            buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 60))

def classify(records: Iterable, known_symbols: frozenset[str], now_ms: int) -> tuple[list[Accepted], list[Rejected]]:
    """Splits Kafka records into trades and dead letters; never raises on any payload."""
    accepted, rejected = [], []
    for record in records:
        try:
            trade = parse_message(record.value, known_symbols, now_ms)
            accepted.append(Accepted(trade, record.topic, record.partition, record.offset))
        except InvalidMessage as exc:
            rejected.append(Rejected(record.topic, record.partition, record.offset, record.key,
                                     record.value or b"", str(exc)))
    return accepted, rejected


@dataclass(frozen=True)
class ConsumerConfig:
    bootstrap_servers: str
    topic: str
    group: str
    database_url: str
    symbols: frozenset[str]
    batch_size: int
    check_crcs: bool = False
    poll_timeout_ms: int = 500
    instance_id: str | None = None
    dead_letter_max_bytes: int = 65536
    limits: Limits = DEFAULT_LIMITS
    kafka_security: dict[str, str] = field(default_factory=dict, repr=False)  # credentials.kafka_security

    @classmethod
    def from_settings(cls, settings: PlatformSettings, worker: int = 0) -> ConsumerConfig:
        """Worker I > 0 of CONSUMER_WORKERS is the static member ``<CONSUMER_INSTANCE_ID>-I``: ids stay unique."""
        instance_id = settings.consumer_instance_id
        if instance_id and worker:
            instance_id = f"{instance_id}-{worker}"
        return cls(settings.kafka_bootstrap_servers, settings.kafka_topic, settings.consumer_group,
                   role_database_url(settings, INGEST_WRITER), frozenset(settings.symbols),
                   settings.consumer_batch_size, settings.consumer_check_crcs, instance_id=instance_id or None,
                   dead_letter_max_bytes=settings.dead_letter_max_bytes,
                   limits=Limits(settings.consumer_max_id_distance, settings.consumer_max_lateness_s * 1000),
                   kafka_security=kafka_security(settings, KAFKA_CONSUMER))


@dataclass
class Batch:
    """One poll's records on their way to PostgreSQL: ``reached`` is the offset after its last record per
    partition, ``written`` the writer's future once handed over."""

    records: int
    reached: dict[TopicPartition, int]
    accepted: list[Accepted]
    rejected: list[Rejected]
    written: Future | None = None


class PricesConsumer:
    """Polls, validates, writes, then commits; retries PostgreSQL with backoff without losing a message."""

    def __init__(self, config: ConsumerConfig) -> None:
        self.config = config
        self.writer = TradeWriter(config.database_url, dead_letter_max_bytes=config.dead_letter_max_bytes,
                                  limits=config.limits)
        self.kafka = KafkaConsumer(
            bootstrap_servers=config.bootstrap_servers, group_id=config.group,
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=config.batch_size,
            fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=8 * 1024 * 1024,
            check_crcs=config.check_crcs, client_id="prices-consumer", metrics_enabled=False,
            # A static member that restarts takes its partitions back at once (no rebalance), instead of
            # the group waiting out the dead member's 45 s session first.
            group_instance_id=config.instance_id, **config.kafka_security,
        )
        install_fast_records(self.kafka)
        self._stop = threading.Event()
        self._subscribe_once_partitions_are_known()
        # One batch is written to PostgreSQL while the next is polled and validated; offsets are
        # committed on this thread (the Kafka client is not thread-safe) once its write has committed.
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-writer")
        self._in_flight: Batch | None = None

    def stop(self) -> None:
        self._stop.set()

    def _subscribe_once_partitions_are_known(self) -> None:
        """Joins the group only once this client's metadata has the topic's partitions.

        A leader that assigns before then assigns nothing ("No partition metadata for topic") and must
        rejoin when the metadata arrives: the rebalance that exposes the client bug below.
        """
        while not self.kafka.partitions_for_topic(self.config.topic):
            log.warning("topic has no partitions yet; waiting", extra={"topic": self.config.topic})
            if self._stop.wait(TOPIC_RETRY_S):
                return
        self.kafka.subscribe([self.config.topic])

    def _rejoin_if_join_was_dropped(self) -> None:
        """Works around a kafka-python 3.0.12 bug that left a consumer idle for good.

        When the leader rejoins because its topic metadata changed (partitions appeared or grew, a broker
        restarted), that is remembered only as "metadata differs from the last assignment", and the
        leader's next assignment makes them equal again. If ``poll`` times out while that join is in
        flight, the next ``poll`` no longer sees a reason to rejoin and never collects the join's result:
        the member stays "rebalancing" with no partitions and no heartbeats, is evicted after the session
        timeout, and the other members take every partition. A finished join nobody collected is the
        sign; asking for a rejoin starts a fresh one.
        """
        coordinator = self.kafka._coordinator
        join = getattr(coordinator, "_join_task", None)
        if join is not None and join.is_done and not coordinator.need_rejoin():
            log.warning("group join result was dropped by the Kafka client; rejoining",
                        extra={"group": self.config.group})
            coordinator.request_rejoin()

    def run(self) -> None:
        log.info("consumer started", extra={"topic": self.config.topic, "group": self.config.group})
        try:
            while not self._stop.is_set():
                try:
                    batches = self.kafka.poll(timeout_ms=self.config.poll_timeout_ms)
                except KafkaError as exc:
                    # The client reconnects by itself; a poll that failed while the broker is away is retried.
                    log.warning("poll failed; retrying", extra={"error": repr(exc)[:200]})
                    self._stop.wait(POLL_RETRY_S)
                    continue
                self._rejoin_if_join_was_dropped()
                records = [record for batch in batches.values() for record in batch]
                accepted, rejected = classify(records, self.config.symbols, time.time_ns() // 1_000_000)
                reached = {tp: batch[-1].offset + 1 for tp, batch in batches.items() if batch}
                self._hand_over(Batch(len(records), reached, accepted, rejected) if records else None)
                self._report_lag()
            self._hand_over(None)
        finally:
            self._writer_thread.shutdown(wait=True)
            self.kafka.close(autocommit=False)
            self.writer.close()
            log.info("consumer stopped")

    def _hand_over(self, batch: Batch | None) -> None:
        """Waits for the batch in flight, gives the writer ``batch`` at once, then accounts for the finished
        batch and commits its offsets, so that the writer does not idle through the commit's round trip to
        Kafka. Batches are written one after the other, and a batch's offsets are committed only once it
        committed in PostgreSQL: if the finished batch was not written (stopped while PostgreSQL was
        away), neither is ``batch``, and nothing is committed."""
        finished, self._in_flight = self._in_flight, None
        outcome = finished.written.result() if finished is not None else None
        if finished is not None and outcome is None:
            return
        if batch is not None:
            batch.written = self._writer_thread.submit(self._write_with_retry, batch.accepted, batch.rejected)
            self._in_flight = batch
        if finished is not None:
            self._account(finished, outcome)
            self._commit(finished.reached)

    @staticmethod
    def _account(batch: Batch, outcome: WriteOutcome) -> None:
        committed_at = time.time()
        END_TO_END.observe_all([max(0.0, committed_at - item.trade.timestamp / 1000) for item in batch.accepted
                                if isinstance(item.trade, TradeMessage)])
        BATCH_SIZE.observe(batch.records)
        RESULTS.labels("written").inc(outcome.written)
        RESULTS.labels("duplicate").inc(outcome.duplicates)
        RESULTS.labels("rejected").inc(len(batch.rejected) + len(outcome.refused))
        for item in [*batch.rejected, *outcome.refused]:
            log.info("message dead-lettered", extra={"partition": item.partition, "offset": item.offset,
                                                     "reason": item.error[:200]})

    def _commit(self, reached: dict[TopicPartition, int]) -> None:
        """``reached``: per partition, the offset after the batch's last record (records come in offset order)."""
        try:
            self.kafka.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in reached.items()})
        except (CommitFailedError, KafkaError) as exc:
            # The group moved on (rebalance): the new owner re-reads this batch and the unique keys absorb it.
            log.warning("offset commit failed; batch will be re-read", extra={"error": repr(exc)[:200]})

    def _write_with_retry(self, accepted: list[Accepted], rejected: list[Rejected]) -> WriteOutcome | None:
        """The batch written, however long PostgreSQL is away; None when stopped meanwhile (nothing committed)."""

        def write() -> WriteOutcome:
            try:
                return self.writer.write(accepted, rejected)
            except CONNECTION_ERRORS:
                DB_RETRIES.inc()
                raise

        return retry_while_unavailable(write, CONNECTION_ERRORS, initial_s=RETRY_INITIAL_S, max_s=RETRY_MAX_S,
                                       log=log, message="PostgreSQL unavailable; retrying", stop=self._stop)

    def _report_lag(self) -> None:
        """Best effort and never blocking: with the broker away or a rebalance under way, ``position`` needs
        the network (and raises); that skips one report rather than stopping the consumer."""
        for tp in self.kafka.assignment():
            highwater = self.kafka.highwater(tp)
            if highwater is None:
                continue
            try:
                position = self.kafka.position(tp, timeout_ms=0)
            except KafkaError:
                continue
            if position is not None:
                LAG.labels(str(tp.partition)).set(max(0, highwater - position))


def main(argv: list[str] | None = None) -> int:
    """``--worker I`` (0 to CONSUMER_WORKERS - 1): one of the group's processes; Kafka shares the partitions."""
    worker = worker_argument("python -m streaming_services.consumer", argv)
    try:
        settings = PlatformSettings.from_env()
        if not 0 <= worker < settings.consumer_workers:
            raise SettingsError(f"--worker {worker} is outside CONSUMER_WORKERS={settings.consumer_workers}")
        config = ConsumerConfig.from_settings(settings, worker)
        configure_logging(settings.log_level)
        start_metrics("CONSUMER_METRICS_PORT", settings, settings.consumer_metrics_port + worker * WORKER_PORT_STRIDE)
    except (SettingsError, StartupError) as exc:
        print(f"consumer: {exc}", file=sys.stderr)
        return 2
    consumer = wait_for_kafka(lambda: PricesConsumer(config), config.bootstrap_servers)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: consumer.stop())
    consumer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
