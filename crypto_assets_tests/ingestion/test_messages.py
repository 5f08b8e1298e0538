"""TradeMessage: exact decimals on the wire, and a clear reason for every message that can't be a row."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming_services.consumer import classify
from streaming_services.messages import (
    InvalidMessage,
    TradeMessage,
    _check_amount,
    _decode_valid,
    _exact_amount,
    _parse_with_reasons,
    decode_agg_trade_frame,
    parse_trade_message,
)

SYMBOLS = frozenset({"BTCUSDT", "ETHUSDT"})
NOW_MS = 1_795_600_000_000
AGG_TRADE = {"e": "aggTrade", "E": 1680652800000, "s": "BTCUSDT", "a": 5, "p": "28165.47000000",
             "q": "0.00056000", "f": 3, "l": 4, "T": 1680652799999, "m": True, "M": True}


def valid_document() -> dict:
    return json.loads(TradeMessage.from_agg_trade(AGG_TRADE, "replay").to_json(), parse_float=Decimal)


def test_round_trip_keeps_binances_digits_and_the_seed_shape() -> None:
    message = TradeMessage.from_agg_trade(AGG_TRADE, "replay")
    raw = message.to_json()
    assert b'"price":28165.47000000' in raw and b'"volume":0.00056000' in raw
    document = json.loads(raw)
    assert document["event_time"] == "2023-04-04T23:59:59.999Z"
    assert document["trades"] == 2 and document["timestamp"] == 1680652799999
    assert parse_trade_message(raw, SYMBOLS, NOW_MS) == message
    assert str(parse_trade_message(raw, SYMBOLS, NOW_MS).price) == "28165.47000000"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"price": "NaN"}, "NaN is not a number"),
        ({"price": -1}, "price=-1 must be greater than 0"),
        ({"volume": 0}, "volume=0 must be greater than 0"),
        ({"price": True}, "price must be a decimal number"),
        ({"price": "1.123456789"}, "more than 8 decimal places"),
        ({"price": 1e15}, "integer digits"),
        ({"symbol": "DOGEUSDT"}, "unknown symbol"),
        ({"symbol": 7}, "symbol must be a string"),
        ({"timestamp": 1}, "not a plausible trade time"),
        ({"timestamp": NOW_MS + 3 * 86_400_000}, "not a plausible trade time"),
        ({"timestamp": "1680652799999"}, "timestamp must be an integer"),
        ({"agg_trade_id": -5}, "out of range"),
        ({"last_trade_id": 1}, "lower than first_trade_id"),
        ({"trades": 9}, "trades does not equal"),
        ({"is_buyer_maker": "yes"}, "is_buyer_maker"),
        ({"source": "a\x00b"}, "printable"),
        ({"first_trade_id": 0, "last_trade_id": 2**40, "trades": 2**40 + 1}, "spans more trades"),
    ],
)
def test_each_invalid_field_is_named_in_the_reason(change: dict, reason: str) -> None:
    document = {**valid_document(), **change}
    raw = json.dumps(document, default=str).replace('"NaN"', "NaN").encode()
    with pytest.raises(InvalidMessage, match=reason):
        parse_trade_message(raw, SYMBOLS, NOW_MS)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(None, "tombstone"), (b"{", "malformed JSON"), (b"[1]", "JSON object"), (b"\xff\xfe", "malformed JSON"),
     (b'{"symbol": "BTCUSDT"}', "missing fields"), (b"x" * 70_000, "exceeds"), (b"NaN", "NaN"),
     (b"[" * 100_000, "exceeds")],
)
def test_malformed_payloads_are_rejected_with_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        parse_trade_message(raw, SYMBOLS, NOW_MS)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(sorted(valid_document()))


@st.composite
def corrupted_messages(draw) -> bytes:
    """A valid message with fields removed or replaced by anything JSON can hold, or raw garbage."""
    kind = draw(st.sampled_from(["fields", "bytes", "json"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    document = valid_document()
    for name in draw(st.lists(field_names, min_size=1, max_size=4)):
        if draw(st.booleans()):
            document.pop(name, None)
        else:
            document[name] = draw(json_values)
    return json.dumps(document, default=str).encode()


@pytest.mark.slow
@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(corrupted_messages())
def test_no_payload_makes_validation_raise_anything_but_a_reason(raw: bytes) -> None:
    try:
        message = parse_trade_message(raw, SYMBOLS, NOW_MS)
    except InvalidMessage as exc:
        assert str(exc)
        return
    assert message.price > 0 and message.volume > 0 and message.symbol in SYMBOLS
    assert message.trades >= 1 and -(message.price.as_tuple().exponent) <= 8


class Record:
    def __init__(self, offset: int, value: bytes | None) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = "t", 0, offset, None, value


@settings(max_examples=300, deadline=None)
@given(st.lists(corrupted_messages(), max_size=30))
def test_classify_accounts_for_every_record(payloads: list[bytes]) -> None:
    valid = TradeMessage.from_agg_trade(AGG_TRADE, "replay").to_json()
    records = [Record(i, p) for i, p in enumerate(payloads)] + [Record(len(payloads), valid)]
    accepted, rejected = classify(records, SYMBOLS, NOW_MS)
    assert sorted([a.offset for a in accepted] + [r.offset for r in rejected]) == list(range(len(records)))
    assert accepted[-1].offset == len(payloads)
    assert all(r.error for r in rejected)


@pytest.mark.slow
@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(corrupted_messages())
def test_the_fused_decoder_accepts_exactly_what_the_field_by_field_rules_accept(raw: bytes) -> None:
    try:
        reference = _parse_with_reasons(raw, SYMBOLS, NOW_MS)
    except InvalidMessage:
        reference = None
    fast = _decode_valid(raw, SYMBOLS, NOW_MS)
    assert fast is None or fast == reference
    if reference is not None and fast is None:
        # Only spellings the strict decoder leaves to the general path (a price given as a string, a bool as
        # the trade count) may take it; a plain valid message never does.
        assert raw != reference.to_json()


def test_a_valid_message_takes_the_fast_path_and_a_frame_decodes_like_from_agg_trade() -> None:
    message = TradeMessage.from_agg_trade(AGG_TRADE, "replay")
    assert _decode_valid(message.to_json(), SYMBOLS, NOW_MS) == message
    frame = json.dumps({"stream": "btcusdt@aggTrade", "data": AGG_TRADE}).encode()
    assert decode_agg_trade_frame(frame, "replay") == message
    assert decode_agg_trade_frame(b'{"result":null,"id":1}', "replay") is None
    assert decode_agg_trade_frame(json.dumps({"data": {**AGG_TRADE, "p": 1.5}}).encode(), "replay") is None


@pytest.mark.parametrize("text", ["1", "0", "0.5", "123456789012", "1234567890123", "1.12345678", "1.123456789",
                                  "1E-7", "1E-9", "1E+2", "-1", "NaN", "Infinity", "0.00000000", "1.10", "0E-8",
                                  "999999999999.99999999", "-0"])
def test_the_amount_check_agrees_with_the_rule_of_the_reasoned_path(text: str) -> None:
    try:
        expected = _check_amount("price", Decimal(text)) is not None
    except InvalidMessage:
        expected = False
    assert _exact_amount(Decimal(text)) is expected
