"""The bench's read-back tells offsets skipped from records never written
(bench/kafka_probe.py note_offset, skipped_offsets)."""

from __future__ import annotations

from bench.kafka_probe import note_offset, skipped_offsets


def test_contiguous_offsets_skip_nothing() -> None:
    spans: dict[int, tuple[int, int, int]] = {}
    for partition in (0, 1):
        for offset in range(5, 10):
            note_offset(spans, partition, offset)
    assert spans == {0: (5, 9, 5), 1: (5, 9, 5)}
    assert skipped_offsets(spans) == 0


def test_a_hole_in_a_partition_is_counted() -> None:
    spans: dict[int, tuple[int, int, int]] = {}
    for offset in (0, 1, 2, 6, 7):  # 3, 4 and 5 never read
        note_offset(spans, 3, offset)
    note_offset(spans, 0, 0)
    assert skipped_offsets(spans) == 3
