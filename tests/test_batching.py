import tracemalloc

import numpy as np
import pytest

from gdfast.batching import Batches


def data(n=23, d=5):
    x = np.arange(n * d, dtype=np.float32).reshape(n, d)
    return x, np.arange(n, dtype=np.int64)


def epoch(b):
    """One epoch as copies (the yielded batches are reused buffers)."""
    return [(xb.copy(), yb.copy()) for xb, yb in b]


def test_full_batch_is_the_whole_set_without_copy():
    x, y = data()
    b = Batches(x, y, None)
    (xb, yb), = list(b)
    assert xb is x and yb is y and len(b) == 1 and b.full
    assert Batches(x, y, 1000).full


@pytest.mark.parametrize("batch_size, drop_last, sizes", [
    (1, False, [1] * 23), (5, False, [5, 5, 5, 5, 3]), (5, True, [5, 5, 5, 5]), (23, False, [23]),
])
def test_minibatch_sizes_and_coverage(batch_size, drop_last, sizes):
    x, y = data()
    b = Batches(x, y, batch_size, drop_last=drop_last, seed=1)
    batches = epoch(b)
    assert [len(yb) for _, yb in batches] == sizes and len(b) == len(sizes)
    seen = np.concatenate([yb for _, yb in batches])
    assert len(set(seen)) == len(seen) == sum(sizes)
    for xb, yb in batches:               # rows travel with their labels
        np.testing.assert_array_equal(xb, x[yb])


def test_reshuffled_every_epoch_and_reproducible_from_seed():
    x, y = data(100)
    a, b = Batches(x, y, 10, seed=7), Batches(x, y, 10, seed=7)
    e1, e2 = epoch(a), epoch(a)
    order1 = np.concatenate([yb for _, yb in e1])
    order2 = np.concatenate([yb for _, yb in e2])
    assert not np.array_equal(order1, order2)
    assert not np.array_equal(order1, np.arange(100))
    np.testing.assert_array_equal(order1, np.concatenate([yb for _, yb in epoch(b)]))
    c = Batches(x, y, 10, seed=8)
    assert not np.array_equal(order1, np.concatenate([yb for _, yb in epoch(c)]))
    unshuffled = Batches(x, y, 10, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in epoch(unshuffled)]), y)


def test_rng_state_round_trip_resumes_the_same_order():
    x, y = data(50)
    a = Batches(x, y, 8, seed=3)
    epoch(a)
    state = a.get_state()
    assert isinstance(state, str)
    expected = epoch(a)
    b = Batches(x, y, 8, seed=999)
    b.set_state(state)
    for (xa, ya), (xb, yb) in zip(expected, epoch(b)):
        np.testing.assert_array_equal(ya, yb)


def test_batches_reuse_preallocated_buffers_and_allocate_nothing_big():
    x, y = data(2000, 784)
    b = Batches(x, y, 128, seed=0)
    first = next(iter(b))[0]
    ptrs = {xb.ctypes.data for xb, _ in b}
    assert ptrs == {first.ctypes.data}
    tracemalloc.start()
    for _ in b:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 128 * 784 * 4 // 4, f"an epoch allocated {peak} bytes at peak"


def test_bad_arguments():
    x, y = data()
    with pytest.raises(ValueError, match="same length"):
        Batches(x, y[:-1], 4)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        Batches(x, y, 0)
    with pytest.raises(ValueError, match="batch_size"):
        Batches(x, y, 2.5)
    with pytest.raises(ValueError, match="C-contiguous"):
        Batches(x[:, ::2], y, 4)
    with pytest.raises(ValueError, match="at least one example"):
        Batches(x[:0], y[:0], 4)


def translated(img, dr, dc):
    out = np.zeros_like(img)
    r, c = img.shape
    out[max(dr, 0):r + min(dr, 0), max(dc, 0):c + min(dc, 0)] = \
        img[max(-dr, 0):r - max(dr, 0), max(-dc, 0):c - max(dc, 0)]
    return out


def test_shift_augmentation_translates_each_image_uniformly():
    rng = np.random.default_rng(0)
    x = rng.random((300, 6 * 5), dtype=np.float32) + 0.5    # no zero pixels: moves are identifiable
    y = np.arange(300)
    b = Batches(x, y, 32, seed=2, shift=2, image_shape=(6, 5))
    seen = {}
    for _ in range(3):
        for xb, yb in b:
            for img, label in zip(xb.reshape(-1, 6, 5), yb):
                src = x[label].reshape(6, 5)
                moves = [(dr, dc) for dr in range(-2, 3) for dc in range(-2, 3)
                         if np.array_equal(img, translated(src, dr, dc))]
                assert len(moves) == 1
                seen[moves[0]] = seen.get(moves[0], 0) + 1
    assert len(seen) == 25 and min(seen.values()) > 900 / 25 / 3   # every move, none starved
    # the same seed gives the same augmented epoch
    a1, a2 = Batches(x, y, 32, seed=5, shift=1, image_shape=(6, 5)), Batches(x, y, 32, seed=5, shift=1, image_shape=(6, 5))
    for (xa, _), (xb, _) in zip(epoch(a1), epoch(a2)):
        np.testing.assert_array_equal(xa, xb)
    with pytest.raises(ValueError, match="image_shape"):
        Batches(x, y, 32, shift=1)
    with pytest.raises(ValueError, match="shuffled mini-batches"):
        Batches(x, y, 32, shift=1, shuffle=False, image_shape=(6, 5))
