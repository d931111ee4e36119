"""models/kernels.py: the compiled CPU decoding step's weight preparation (its results against the float step are
tested in test_inference.py, on the golden model)."""

from __future__ import annotations

import numpy as np
import pytest

from models import kernels


def _layer(rng: np.random.Generator, c: int = 8) -> dict[str, np.ndarray]:
    shapes = {"qkv": (3 * c, c), "out": (c, c), "up": (4 * c, c), "down": (c, 4 * c)}
    layer = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}
    layer.update({f"{name}_bias": rng.standard_normal(shape[0], dtype=np.float32) for name, shape in shapes.items()})
    layer.update({f"norm{i}_{p}": np.ones(c, np.float32) for i in (1, 2) for p in ("weight", "bias")})
    return layer


def test_int8_rows_reproduce_the_float_matrix_within_half_a_step_of_each_rows_scale():
    rows = np.arange(1, 7, dtype=np.float32)[:, None]
    w = np.random.default_rng(0).standard_normal((6, 40), dtype=np.float32) * rows
    q, scale = kernels.quantize_rows(w)
    assert q.dtype == np.int8 and scale.shape == (6,) and np.abs(q).max() == 127
    assert np.all(np.abs(q * scale[:, None] - w) <= scale[:, None] / 2 + 1e-6)


def test_float32_step_weights_are_the_callers_arrays_and_int8_ones_are_copies():
    layer = _layer(np.random.default_rng(1))
    float_weights = kernels.step_weights([layer])
    assert np.shares_memory(float_weights.qkv[0], layer["qkv"]) and np.all(float_weights.qkv_scale[0] == 1)
    int8_weights = kernels.step_weights([layer], int8=True)
    assert int8_weights.up[0].dtype == np.int8 and int8_weights.up_bias[0].dtype == np.float32


def test_a_strided_matrix_is_refused_with_the_layout_the_step_needs():
    layer = _layer(np.random.default_rng(2))
    layer["out"] = np.asfortranarray(layer["out"])
    with pytest.raises(kernels.KernelError, match="row-major"):
        kernels.step_weights([layer])


def test_the_reason_says_available_exactly_when_the_kernels_run():
    assert (kernels.unavailable_reason() == "available") == kernels.available()


NUMBA = pytest.mark.skipif(not kernels.available(), reason=kernels.unavailable_reason())


def _cache(rng: np.random.Generator, layers: int = 2, heads: int = 4, head_dim: int = 8, length: int = 24):
    keys = rng.standard_normal((layers, heads, head_dim, length), dtype=np.float32)
    values = rng.standard_normal((layers, heads, length, head_dim), dtype=np.float32)
    return keys, values


def _scratch(heads: int, head_dim: int, length: int) -> kernels.Scratch:
    return kernels.Scratch(np.zeros((heads, length), np.float32), np.zeros((heads, length), np.int32),
                           np.zeros((heads, head_dim), np.float32))


@NUMBA
def test_the_compiled_exp_is_within_5e7_of_numpy_and_zero_for_minus_infinity():
    x = -np.linspace(0.0, 86.9, 50_001, dtype=np.float32)
    got = np.concatenate([x, [-np.inf]]).astype(np.float32)
    total = kernels._kernels()["exp_shifted"](got, got.size, np.float32(0.0), np.zeros(got.size, np.int32))
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got[:-1] - want) / want) < 5e-7
    assert got[-1] == 0.0 and total == pytest.approx(want.sum(), rel=1e-5)


@NUMBA
def test_the_int8_copy_holds_each_key_and_value_within_half_a_step_of_its_scale():
    keys, values = _cache(np.random.default_rng(3))
    copy = kernels.quantize_cache(keys, values, 20)
    key_error = np.abs(copy.keys[..., :20] * copy.key_scale[:, :, None, :20] - keys[..., :20])
    value_error = np.abs(copy.values[:, :, :20] * copy.value_scale[:, :, :20, None] - values[:, :, :20])
    assert np.all(key_error <= copy.key_scale[:, :, None, :20] / 2 + 1e-6)
    assert np.all(value_error <= copy.value_scale[:, :, :20, None] / 2 + 1e-6)
    assert np.all(copy.key_scale[:, :, 20:] == 0)  # positions from `length` on are left alone


@NUMBA
def test_attention_over_the_int8_copy_is_within_2_percent_of_float32_and_stores_the_new_position_in_both():
    rng = np.random.default_rng(4)
    keys, values = _cache(rng, layers=1)
    qkv = rng.standard_normal((1, 3 * 4 * 8), dtype=np.float32)
    copy = kernels.quantize_cache(keys, values, 15)
    float_keys, float_values = keys[0].copy(), values[0].copy()
    want, got = np.zeros((1, 32), np.float32), np.zeros((1, 32), np.float32)
    kernels._kernels()["attend"](qkv, float_keys, float_values, kernels._NO_BIAS, 15, 4, _scratch(4, 8, 24), want)
    kernels._kernels()["attend_int8"](qkv, keys[0], values[0], copy.keys[0], copy.key_scale[0], copy.values[0],
                                      copy.value_scale[0], kernels._NO_BIAS, 15, 4, _scratch(4, 8, 24), got)
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()
    assert np.array_equal(keys[0], float_keys) and np.array_equal(values[0], float_values)
    assert np.array_equal(copy.keys, kernels.quantize_cache(keys, values, 16).keys)


@NUMBA
def test_steps_on_the_int8_copy_extend_it_as_copying_the_float32_cache_afresh_would():
    """What lets a decoding remake the copy after `KVCache.keep_rows`: the steps keep writing the float32 cache."""
    rng = np.random.default_rng(5)
    c, heads = 8, 2
    layers = [_layer(rng, c) for _ in range(2)]
    keys, values = _cache(rng, layers=2, heads=heads, head_dim=c // heads, length=12)
    weights = kernels.step_weights(layers, int8=True)
    copy = kernels.quantize_cache(keys, values, 5)
    for t in range(5, 9):
        kernels.decode_step(rng.standard_normal((1, c), dtype=np.float32), weights, keys, values, None, t, heads,
                            1e-5, 1, copy)
    afresh = kernels.quantize_cache(keys, values, 9)
    for field in kernels.Int8Cache._fields:
        assert np.array_equal(getattr(copy, field), getattr(afresh, field)), field


def test_an_int8_copy_of_other_sizes_is_refused_with_what_to_do():
    keys, values = _cache(np.random.default_rng(6))
    with pytest.raises(kernels.KernelError, match="make a new one"):
        kernels.quantize_cache(keys, values, 4, kernels.Int8Cache.empty(2, 4, 8, 10))
