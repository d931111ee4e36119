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
