"""Packer regressions found by the runtime's tests."""

from __future__ import annotations

from muxdeploy.runtimes.packing import encode_token_instances


def test_nested_lists_are_refused_not_crashed() -> None:
    # one nested instance alone used to pass the fast path's dtype check and crash in the fancy indexing
    enc = encode_token_instances([[[7, 8]]], 8, 0, 64)
    assert enc.errors == {0: "has shape (1, 2); a token-id instance is one flat sequence of ints"}
    enc = encode_token_instances([[5, 6], [[7, 8]], [9]], 8, 0, 64)
    assert list(enc.errors) == [1] and enc.ids[2, 0] == 9


def test_scatter_with_and_without_truncation_matches_a_plain_loop() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for max_len in (6, 11):  # all fit in L=6 / some are truncated
        instances = [rng.integers(1, 50, size=int(rng.integers(0, max_len + 1))).tolist() for _ in range(200)]
        enc = encode_token_instances(instances, 6, 0, 50, filler=np.full(6, 7, dtype=np.int32))
        for i, inst in enumerate(instances):
            want = [7] * 6 if not inst else (inst[:6] + [0] * 6)[:6]
            assert enc.ids[i].tolist() == want


def test_id_matrix_fast_path_matches_the_general_path() -> None:
    """An [M, W] int matrix takes one reduction and one copy; the answer is the list path's, errors included
    (negative ids of every width too, where the vocabulary is larger than the unsigned trick covers)."""
    import numpy as np

    rng = np.random.default_rng(1)
    filler = np.full(8, 3, dtype=np.int32)
    for width, dtype, strict, vocab in [
        (8, np.int64, False, 50),
        (5, np.int32, False, 50),
        (12, np.int64, False, 50),
        (12, np.int32, True, 50),
        (8, np.int8, False, 50),
        (8, np.int8, False, 300),  # -1 read as uint8 is 255 < 300: the two-reduction check must run
        (8, np.int16, False, 70_000),
        (8, np.uint16, False, 50),
        (8, np.dtype(">i8"), False, 50),  # byte-swapped: read as unsigned it would be another number
        (8, np.int64, False, None),
    ]:
        ids = rng.integers(0, 50, size=(40, width)).astype(dtype)
        for bad in (None, (7, -1), (9, 50), (11, 2**56)):  # 2**56 byte-swapped reads as 1
            if bad and bad[1] >= np.iinfo(dtype).max:
                continue
            if bad and ((bad[1] < 0 and dtype == np.uint16) or (bad[1] >= 50 and vocab is None)):
                continue
            if bad:
                ids[bad[0], 2] = bad[1]
            fast = encode_token_instances(ids, 8, 0, vocab, strict, filler)
            slow = encode_token_instances([row.tolist() for row in ids], 8, 0, vocab, strict, filler)
            assert fast.ids.dtype == np.int32 and fast.ids.flags["C_CONTIGUOUS"]
            np.testing.assert_array_equal(fast.ids, slow.ids)
            np.testing.assert_array_equal(fast.lengths, slow.lengths)
            assert fast.errors == slow.errors
    swapped = np.full((2, 8), 2**56, dtype=">i8")  # each reads as 1 in the machine's byte order
    assert set(encode_token_instances(swapped, 8, 0, 50).errors) == {0, 1}
    ids = rng.integers(0, 50, size=(4, 8)).astype(np.int32)
    enc = encode_token_instances(ids, 8, 0, 50)
    enc.ids[0, 0] = 49
    assert ids[0, 0] != 49 or ids is not enc.ids  # the caller's array is never aliased
    assert not np.shares_memory(enc.ids, ids)
