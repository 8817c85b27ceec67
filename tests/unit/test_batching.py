"""How the worker cuts batches out of what it has read: a record delivered before (its worker
died, or gave its batch up) runs alone; first deliveries fill batches up to the batch size."""

from __future__ import annotations

from zoo_serving.broker.queue import Entry
from zoo_serving.serving.batcher import _take
from zoo_serving.serving.reader import Item


def item(name: str, deliveries: int = 1) -> Item:
    return Item(uri=name.encode(), entry=Entry(name.encode(), {}, deliveries))


def names(items: list[Item]) -> list[str]:
    return [i.uri.decode() for i in items]


def test_first_deliveries_fill_a_batch_up_to_its_size() -> None:
    carry = [item(f"f{i}") for i in range(5)]
    batch, rest = _take(carry, 4)
    assert names(batch) == ["f0", "f1", "f2", "f3"] and names(rest) == ["f4"]


def test_a_redelivered_record_runs_alone() -> None:
    carry = [item("again", deliveries=2), item("f0"), item("f1")]
    batch, rest = _take(carry, 8)
    assert names(batch) == ["again"] and names(rest) == ["f0", "f1"]


def test_a_redelivered_record_is_kept_out_of_a_batch_of_first_deliveries() -> None:
    carry = [item("f0"), item("again", deliveries=3), item("f1"), item("again2", deliveries=2)]
    batch, rest = _take(carry, 8)
    assert names(batch) == ["f0", "f1"]
    assert names(rest) == ["again", "again2"]
    batch, rest = _take(rest, 8)
    assert names(batch) == ["again"] and names(rest) == ["again2"]
