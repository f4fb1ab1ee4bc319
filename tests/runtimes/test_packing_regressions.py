"""Packer regressions found by the runtime's tests."""

from __future__ import annotations

from runtimes.packing import encode_token_instances


def test_nested_lists_are_refused_not_crashed() -> None:
    # one nested instance alone used to pass the fast path's dtype check and crash in the fancy indexing
    enc = encode_token_instances([[[7, 8]]], 8, 0, 64)
    assert enc.errors == {0: "has shape (1, 2); a token-id instance is one flat sequence of ints"}
    enc = encode_token_instances([[5, 6], [[7, 8]], [9]], 8, 0, 64)
    assert list(enc.errors) == [1] and enc.ids[2, 0] == 9
