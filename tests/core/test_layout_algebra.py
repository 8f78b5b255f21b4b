"""Property tests of the layout algebra (hypothesis): round trips are identities, bit for bit; shapes
are predicted; a flip changes an asymmetric kernel; bad patterns are refused."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightport.core.errors import LayoutError
from weightport.core.layout import (CANONICAL_PATTERNS, CONVOLUTION, CORRELATION, Layout, concat_blocks, flip_axes,
                                    parse_pattern, relayout, reorder_blocks, target_shape)
from weightport.core.steps import Relayout, ReorderBlocks
from weightport.formats.keras.patterns import KERAS_PATTERNS, KERAS_TH_PATTERNS

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True)
AXES = ["o", "i", "d", "h", "w"]


@st.composite
def layout_pair(draw):
    """A random array, a random source pattern over some axes and a random permutation/grouping of them."""
    count = draw(st.integers(2, 5))
    names = AXES[:count]
    sizes = {n: draw(st.integers(1, 4)) for n in names}
    src_order = draw(st.permutations(names))
    dst_order = draw(st.permutations(names))
    # optionally merge two neighbours of the destination into one group
    if count >= 3 and draw(st.booleans()):
        k = draw(st.integers(0, count - 2))
        dst = " ".join(dst_order[:k]) + f" ({dst_order[k]} {dst_order[k + 1]}) " + " ".join(dst_order[k + 2:])
    else:
        dst = " ".join(dst_order)
    shape = tuple(sizes[n] for n in src_order)
    array = np.arange(math.prod(shape), dtype=np.float32).reshape(shape) * 1.5 - 7.0
    sem = draw(st.sampled_from([CORRELATION, CONVOLUTION]))
    sem2 = draw(st.sampled_from([CORRELATION, CONVOLUTION]))
    return array, Layout(" ".join(src_order), sem), Layout(dst.strip(), sem2), sizes


@SETTINGS
@given(layout_pair())
def test_round_trip_is_identity(case):
    array, src, dst, sizes = case
    there = relayout(array, src, dst, sizes)
    back = relayout(there, dst, src, sizes)
    assert back.dtype == array.dtype and np.array_equal(back.view(np.uint32), array.view(np.uint32))


@SETTINGS
@given(layout_pair())
def test_shape_is_predicted_and_every_value_kept(case):
    array, src, dst, sizes = case
    out = relayout(array, src, dst, sizes)
    assert out.shape == target_shape(array.shape, src.pattern, dst.pattern, sizes)
    assert out.flags.c_contiguous
    assert np.array_equal(np.sort(out, axis=None), np.sort(array, axis=None))


@SETTINGS
@given(layout_pair())
def test_relayout_step_inverse_composes_to_identity(case):
    array, src, dst, sizes = case
    step = Relayout(src, dst, tuple(sizes.items()))
    assert np.array_equal(step.inverse().apply(step.apply(array)), array)
    assert step.shape(array.shape) == step.apply(array).shape


@SETTINGS
@given(st.integers(1, 4), st.integers(2, 5), st.permutations("abcd"))
def test_reorder_blocks_round_trip(units, rows, order):
    array = np.random.default_rng(units).normal(size=(4 * units, rows)).astype(np.float32)
    dst = "".join(order)
    there = reorder_blocks(array, 0, "abcd", dst)
    assert np.array_equal(reorder_blocks(there, 0, dst, "abcd"), array)
    assert np.array_equal(ReorderBlocks(0, "abcd", dst).inverse().apply(there), array)
    first = "abcd".index(dst[0])
    assert np.array_equal(there[:units], array[first * units:(first + 1) * units])


def test_flip_twice_is_identity_and_flip_changes_asymmetric_kernels():
    kernel = np.random.default_rng(0).normal(size=(5, 3, 3, 2)).astype(np.float32)
    conv = relayout(kernel, Layout("o i h w", CORRELATION), Layout("o i h w", CONVOLUTION))
    assert not np.array_equal(conv, kernel)
    assert np.array_equal(conv, kernel[:, :, ::-1, ::-1])
    assert np.array_equal(relayout(conv, Layout("o i h w", CONVOLUTION), Layout("o i h w", CORRELATION)), kernel)
    assert np.array_equal(flip_axes(flip_axes(kernel, (2, 3)), (2, 3)), kernel)


def test_flip_happens_in_the_source_axes_before_the_permutation():
    kernel = np.arange(3 * 2 * 4 * 5, dtype=np.float32).reshape(3, 2, 4, 5)  # h w i o
    out = relayout(kernel, Layout("h w i o", CONVOLUTION), Layout("o i h w", CORRELATION))
    for o, i, h, w in itertools.product(range(5), range(4), range(3), range(2)):
        assert out[o, i, h, w] == kernel[2 - h, 1 - w, i, o]


def test_depthwise_merge_matches_channel_order():
    kernel = np.arange(3 * 2 * 4 * 2, dtype=np.float32).reshape(3, 2, 4, 2)  # h w i m
    out = relayout(kernel, Layout("h w i m"), Layout("(i m) 1 h w"))
    assert out.shape == (8, 1, 3, 2)
    for i, m in itertools.product(range(4), range(2)):
        assert np.array_equal(out[i * 2 + m, 0], kernel[:, :, i, m])


def test_every_named_pattern_parses_and_round_trips():
    rng = np.random.default_rng(1)
    sizes = {"o": 3, "i": 2, "m": 2, "d": 2, "h": 3, "w": 4}
    for role, pattern in KERAS_PATTERNS.items():
        canonical = CANONICAL_PATTERNS[role]
        shape = tuple(math.prod(sizes[n] for n in group) for group in parse_pattern(pattern))
        array = rng.normal(size=shape).astype(np.float32)
        known = {k: v for k, v in sizes.items() if k in Layout(pattern).axes}
        there = relayout(array, Layout(pattern), Layout(canonical), known)
        assert np.array_equal(relayout(there, Layout(canonical), Layout(pattern), known), array), role
    for pattern in KERAS_TH_PATTERNS.values():
        assert Layout(pattern).axes


def test_concat_blocks_joins_per_gate_arrays():
    parts = [np.full((3, 2), k, np.float32) for k in range(4)]
    joined = concat_blocks(parts, axis=-1)
    assert joined.shape == (3, 8) and np.array_equal(joined[:, 4:6], parts[2])
    with pytest.raises(LayoutError):
        concat_blocks([np.zeros((3, 2)), np.zeros((3, 3))])


@pytest.mark.parametrize("src,dst,shape", [
    ("o i h w", "o i h", (2, 3, 4, 5)),          # different axes
    ("o i h w", "o i h w", (2, 3, 4)),           # wrong rank
    ("o (i m) h w", "o i m h w", (2, 7, 4, 5)),  # group does not divide (m unknown)
    ("o ((i m)) h w", "o i m h w", (2, 6, 4, 5)),  # nested group
    ("o o h w", "o h w", (2, 2, 4, 5)),          # repeated name
    ("o i 1 w", "o i w", (2, 3, 2, 5)),          # '1' axis of length 2
])
def test_bad_patterns_are_refused(src, dst, shape):
    with pytest.raises(LayoutError):
        relayout(np.zeros(shape, np.float32), Layout(src), Layout(dst), {"i": 3} if "m" in src else None)


def test_semantics_cannot_be_given_to_a_plain_tensor():
    with pytest.raises(LayoutError):
        relayout(np.zeros((2, 3), np.float32), Layout("o i"), Layout("o i", CONVOLUTION))


@st.composite
def strided_views(draw):
    """A seeded random array seen through a random permutation, random flips and a random slice."""
    ndim = draw(st.integers(1, 5))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int8]))
    array = np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal(shape).astype(dtype)
    flips = tuple(draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim)))
    view = array[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    view = view.transpose(draw(st.permutations(range(ndim))))
    return view, draw(st.integers(1, 4096))


@SETTINGS
@given(strided_views())
def test_copy_blocks_writes_exactly_numpys_c_order_bytes(case):
    """Blocks concatenated == numpy's own C-order copy, for any view and any block size (multi-block too)."""
    from weightport.core.blocks import copy_blocks
    view, block_bytes = case
    pieces = [np.ascontiguousarray(block).tobytes() for block in copy_blocks(view, block_bytes)]
    assert b"".join(pieces) == np.ascontiguousarray(view).tobytes()


def test_compose_relayouts_equals_the_chain_step_by_step():
    """Keras HWIO -> canonical OIHW (flip) -> Theano OIHW (flip back): one composed view, same bytes."""
    from weightport.core.layout import elementary_view
    from weightport.core.steps import compose_relayouts
    kernel = np.random.default_rng(5).standard_normal((3, 2, 4, 5)).astype(np.float32)
    steps = (Relayout(Layout("h w i o", "convolution"), Layout("o i h w", "correlation")),
             Relayout(Layout("o i h w", "correlation"), Layout("o i h w", "convolution")))
    composed = compose_relayouts(steps)
    step_by_step = steps[1].apply(steps[0].apply(kernel))
    assert np.ascontiguousarray(elementary_view(kernel, composed.src, composed.dst)).tobytes() == step_by_step.tobytes()
    assert compose_relayouts((steps[0], Relayout(Layout("i o h w"), Layout("o i h w")))) is None


@pytest.mark.parametrize("shape, order", [((3001, 37), (1, 0)), ((5, 7, 700, 3), (3, 2, 0, 1)),
                                          ((49, 61, 83), (2, 1, 0))])
def test_copy_blocks_split_over_threads_keeps_every_tile_in_place(shape, order):
    """Views whose blocks span many tiles (odd counts, so the two threads' shares differ): same bytes as NumPy."""
    from weightport.core.blocks import copy_blocks
    array = np.random.default_rng(11).standard_normal(shape).astype(np.float32)
    view = array.transpose(order)[::-1]
    for block_bytes in (4096, 65536, 1 << 20):
        joined = b"".join(np.ascontiguousarray(b).tobytes() for b in copy_blocks(view, block_bytes))
        assert joined == np.ascontiguousarray(view).tobytes()


def test_write_bytes_writes_a_large_array_in_slices_exactly(tmp_path):
    from weightport.core.streaming import WRITE_SLICE, write_bytes
    array = np.random.default_rng(12).standard_normal(WRITE_SLICE // 8 * 5 + 3)  # 2.5 slices of float64
    with open(tmp_path / "out.bin", "wb") as handle:
        handle.write(b"head")
        assert write_bytes(handle, array) == array.nbytes
    assert (tmp_path / "out.bin").read_bytes() == b"head" + array.tobytes()


@pytest.mark.parametrize("count", [0, 1, 2, 7])
def test_write_in_background_consumes_every_block_in_order(count):
    """One block is written inline, more on the writer thread; either way every block, in order."""
    from weightport.core.streaming import write_in_background
    blocks = [np.full(3, k, np.int32) for k in range(count)]
    seen: list[int] = []
    write_in_background(iter(blocks), lambda block: seen.append(int(block[0])))
    assert seen == list(range(count))


@pytest.mark.parametrize("count", [1, 5])
def test_write_in_background_raises_a_failed_write(count):
    from weightport.core.streaming import write_in_background
    def refuse(_block):
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        write_in_background(iter([np.zeros(2)] * count), refuse)


def test_write_in_background_raises_a_failed_producer_after_stopping_the_writer():
    from weightport.core.streaming import write_in_background
    def produce():
        yield np.zeros(2)
        yield np.ones(2)
        raise ValueError("bad tensor")
    seen: list[float] = []
    with pytest.raises(ValueError, match="bad tensor"):
        write_in_background(produce(), lambda block: seen.append(float(block[0])))
    assert seen == [0.0, 1.0]


def test_semantics_change_needs_no_sizes_of_merged_groups():
    """A depthwise kernel ``(i m) 1 h w`` flips between correlation and convolution without knowing ``m``:
    the rotation is over h and w only, the merged group stays whole, and the rank is still checked."""
    kernel = np.random.RandomState(5).standard_normal((6, 1, 3, 2)).astype(np.float32)
    src, dst = Layout("(i m) 1 h w", CORRELATION), Layout("(i m) 1 h w", CONVOLUTION)
    flipped = relayout(kernel, src, dst)
    np.testing.assert_array_equal(flipped, kernel[:, :, ::-1, ::-1])
    assert target_shape(kernel.shape, src.pattern, dst.pattern) == (6, 1, 3, 2)
    np.testing.assert_array_equal(relayout(kernel, src, src), kernel)
    with pytest.raises(LayoutError):
        relayout(kernel[0], src, dst)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("flipped", [False, True])
def test_plain_transposes_of_a_memory_map_are_tiled_straight_from_it(tmp_path, dtype, flipped):
    """A Dense kernel or an LLM matrix (out x in to in x out) is read through the map as (P, M, S) runs with no
    staging copy; the bytes are NumPy's own transpose of the file's array, on a non-square asymmetric matrix."""
    from weightport.core.blocks import BlockBuffers, copy_blocks, view_as
    array = np.random.default_rng(13).standard_normal((1531, 263)).astype(dtype)
    path = tmp_path / "m.bin"
    array.tofile(path)
    mapped = np.memmap(path, dtype=dtype, mode="r", shape=array.shape)
    view = mapped.T[::-1] if flipped else mapped.T
    assert view_as(np.moveaxis(view[:40], 0, -1), (1, 1531, 40)) is not None  # the direct path is taken
    for block_bytes in (4096, 300_000, 1 << 20):
        joined = b"".join(np.ascontiguousarray(b).tobytes() for b in copy_blocks(view, block_bytes))
        assert joined == np.ascontiguousarray((array.T[::-1] if flipped else array.T)).tobytes()
    staged = np.moveaxis(np.zeros((7, 7, 512, 80), np.float32).transpose(3, 2, 0, 1), 0, -1)  # fc1 after Flatten
    assert view_as(staged, (1, 512 * 49, 80)) is None  # needs the staging copy
    assert BlockBuffers(1 << 20).copy(view[:8]).tobytes() == np.ascontiguousarray(view[:8]).tobytes()


def test_write_hashed_writes_and_digests_the_same_bytes(tmp_path):
    import hashlib
    from weightport.core.streaming import WRITE_SLICE, write_hashed
    array = np.random.default_rng(14).standard_normal(WRITE_SLICE // 4 * 3 + 5).astype(np.float32)
    digest = hashlib.sha256()
    with open(tmp_path / "out.bin", "wb") as handle:
        assert write_hashed(handle, array, digest) == array.nbytes
    assert (tmp_path / "out.bin").read_bytes() == array.tobytes()
    assert digest.hexdigest() == hashlib.sha256(array.tobytes()).hexdigest()


@pytest.mark.parametrize("values, overflows", [([1.0, 7e4, -2.0], True), ([1.0, np.inf, np.nan], False),
                                               ([65504.0, -65504.0, 0.5], False), ([-1e6, 3.0, 2.0], True)])
def test_stored_slices_cast_and_report_only_finite_values_that_overflowed(values, overflows):
    """float32 -> float16: a finite value past 65504 becomes inf and is reported; an inf or NaN of the source is not."""
    from types import SimpleNamespace
    from weightport.core.streaming import stored_slices
    source = np.array(values * 1000, np.float32)
    item = SimpleNamespace(blocks=lambda: iter([source[:1500], source[1500:]]))
    seen: list[bool] = []
    out = np.concatenate(list(stored_slices(item, np.dtype("<f2"), lambda: seen.append(True))))
    with np.errstate(over="ignore"):
        assert out.tobytes() == source.astype("<f2").tobytes()
    assert bool(seen) is overflows
