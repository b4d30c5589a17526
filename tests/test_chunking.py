"""The backends' chunk-and-pad loop: every call has one shape, the last chunk is padded with the
last item, and the outputs keep the real items' rows in order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_simfluence.bayes.chunking import chunked


def test_chunks_are_padded_with_the_last_item_and_trimmed():
    items = np.arange(7) * 10.0
    calls = []

    def fn(start, index):
        calls.append((start, index.copy()))
        return items[index], None, np.stack([items[index], -items[index]], axis=1)

    values, nothing, pairs = chunked(fn, 7, 3)
    assert [start for start, _ in calls] == [0, 3, 6]
    assert all(len(index) == 3 for _, index in calls)
    np.testing.assert_array_equal(calls[-1][1], [6, 6, 6])
    np.testing.assert_array_equal(values, items)
    assert nothing is None
    np.testing.assert_array_equal(pairs, np.stack([items, -items], axis=1))


def test_one_array_along_a_later_axis_and_fewer_items_than_a_chunk():
    items = np.arange(5.0)
    out = chunked(lambda start, index: np.tile(items[index], (2, 1)), 5, 2, axis=1)
    np.testing.assert_array_equal(out, np.tile(items, (2, 1)))
    np.testing.assert_array_equal(chunked(lambda start, index: items[index], 2, 8), items[:2])


def test_a_jitted_function_compiles_once():
    @jax.jit
    def double(x):
        return 2.0 * x

    items = np.arange(11.0)
    np.testing.assert_array_equal(chunked(lambda start, index: double(jnp.asarray(items[index])), 11, 4), 2.0 * items)
    assert double._cache_size() == 1


def test_nothing_to_chunk_is_an_error():
    with pytest.raises(ValueError, match="at least one item"):
        chunked(lambda start, index: index, 0, 4)
