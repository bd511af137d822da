"""Rows on the aggregates topic: money maps as the exact strings of their Decimals, read
back by the sink (``decode_row``) to the values the rows hold."""

from __future__ import annotations

from decimal import Decimal

from streams.customers.c360 import Customer360State
from streams.customers.measures import Measures
from streams.customers.rows import AggregateRow, AlertRow, money_text
from streams.customers.stage import decode_row, encode_rows


def test_money_text_is_the_string_of_the_decimal_for_any_amount() -> None:
    amounts = [0, 1, -1, 5, 9_999, 10_000, -10_000, 12_345, -12_345, 339_200, 10**23 + 7]
    amounts += [10**24 - 1, -(10**24) + 1, 10**24, -(10**24), 10**30 + 12_345, 7 * 10**40]
    amounts += list(range(-30_000, 30_000, 7))
    for v in amounts:
        assert money_text({"EUR": v}) == {"EUR": str(Decimal(v).scaleb(-4))}, v


def test_encoded_rows_decode_to_the_rows_values() -> None:
    measures = Measures()
    measures.events = 2
    measures.revenue = {"EUR": 1_234_567, "GBP": -5}
    aggregate = AggregateRow(60_000, "web", "payment", "GB", "registered", 3, 1, 2, 9, measures)
    state = Customer360State(events=1, lifetime_value={"JPY": 50_000_000})
    alert = AlertRow(60_000, "amount_outlier", "high", 3, 1, 9, 2)
    rows = [aggregate, alert, state.row("c1")]
    encoded = encode_rows(rows)
    assert encoded[0][1][AggregateRow.COLUMNS.index("revenue")] == {
        "EUR": "123.4567",
        "GBP": "-0.0005",
    }
    for row, item in zip(rows, encoded, strict=True):
        assert decode_row(item) == (row.TABLE, row.values())
