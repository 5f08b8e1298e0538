"""The consumer's record reader gives exactly kafka-python's records, positions and errors."""

from __future__ import annotations

import pytest
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.structs import TopicPartition

from streaming_services.kafka_records import FastPartitionRecords

TP = TopicPartition("trades", 2)
GZIP = DefaultRecordBatch.CODEC_GZIP


def fetched(records: list[tuple], magic: int = 2, compression: int = 0, per_batch: int = 7) -> bytes:
    """Several batches, as a fetch returns them: (timestamp, key, value, headers) per record."""
    chunks, offset = [], 0
    for start in range(0, len(records), per_batch):
        builder = MemoryRecordsBuilder(magic=magic, compression_type=compression, batch_size=1 << 22, offset=offset)
        for timestamp, key, value, headers in records[start:start + per_batch]:
            assert builder.append(timestamp, key, value, headers if magic == 2 else None) is not None
            offset += 1
        builder.close()
        chunks.append(builder.buffer())
    return b"".join(chunks)


VARIED = [
    (1_700_000_000_000 + i * (1 if i % 3 else 10**7), None if i % 5 == 0 else f"SYM{i % 4}".encode(),
     None if i == 4 else b"x" * (i * 700 if i % 6 == 1 else i), [("h", b"v"), ("k", None)] if i % 7 == 3 else [])
    for i in range(40)
]


def as_kafka_python(records: list) -> list:
    """Our records as kafka-python makes them: a record without headers has () where it has []."""
    return [record._replace(headers=list(record.headers)) for record in records]


def both(data: bytes, fetch_offset: int = 0, **options) -> tuple:
    return (Fetcher.PartitionRecords(fetch_offset, TP, MemoryRecords(data), **options),
            FastPartitionRecords(fetch_offset, TP, MemoryRecords(data), **options))


@pytest.mark.parametrize("compression", [0, GZIP])
@pytest.mark.parametrize("fetch_offset", [0, 3, 39])
def test_records_and_positions_equal_kafka_pythons(compression: int, fetch_offset: int) -> None:
    data = fetched(VARIED, compression=compression)
    reference, fast = both(data, fetch_offset, check_crcs=False)
    assert fast._plain
    first_reference, first_fast = reference.take(5), as_kafka_python(fast.take(5))
    assert first_fast == first_reference and fast.next_fetch_offset == reference.next_fetch_offset
    assert first_fast[0].offset == fetch_offset
    if reference:
        assert as_kafka_python(fast.take()) == reference.take()
    assert fast.next_fetch_offset == reference.next_fetch_offset == 40
    assert not fast and not reference  # both drained


def test_long_varints_and_headers_decode_alike() -> None:
    """Values past 16 KiB, timestamps apart by hours and headers take the multi-byte and header paths."""
    data = fetched(VARIED, per_batch=40)
    reference, fast = both(data, check_crcs=False)
    records = fast.take()
    assert as_kafka_python(records) == reference.take()
    assert records[0].headers == ()
    assert {len(r.value) for r in records if r.value} >= {700 * 7, 700 * 37}
    assert records[3].headers == [("h", b"v"), ("k", None)] and records[3].serialized_header_size == 3
    assert records[0].key is None and records[4].value is None and records[4].serialized_value_size == -1


class Upper:
    def deserialize(self, topic: str, headers: list, data: bytes | None) -> bytes | None:
        return data.upper() if data is not None else None


@pytest.mark.parametrize("options", [{"check_crcs": True}, {"check_crcs": False, "value_deserializer": Upper()}])
def test_other_configurations_are_left_to_kafka_python(options: dict) -> None:
    reference, fast = both(fetched(VARIED), **options)
    assert not fast._plain
    assert fast.take() == reference.take()


def test_pre_v2_batches_are_read_by_kafka_python() -> None:
    old = [(ts, key, value, None) for ts, key, value, _ in VARIED]
    reference, fast = both(fetched(old, magic=1), check_crcs=False)
    assert fast.take() == reference.take()
    assert fast.next_fetch_offset == reference.next_fetch_offset == 40


def test_a_corrupt_record_raises_as_in_kafka_python() -> None:
    data = bytearray(fetched([(1_700_000_000_000, b"k", b"value", [])], per_batch=1))
    data[DefaultRecordBatch.HEADER_STRUCT.size] += 2  # the record's length varint says one byte more
    for records in both(bytes(data), check_crcs=False):
        with pytest.raises(CorruptRecordError):
            records.take()
