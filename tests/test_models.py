"""Models: GEMM-form convolutions equal XLA's convolutions; every model vmaps over nodes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from edgejax.models import layers


@pytest.mark.parametrize("kernel", [3, 5])
def test_gemm_conv2d_equals_lax_conv(x64, kernel):
    key_x, key_w = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(key_x, (2, 7, 6, 3))
    params = layers.conv2d_init(key_w, kernel, 3, 4)
    params["b"] = jnp.arange(4.0)
    hwio = params["w"].reshape(kernel, kernel, 3, 4)
    expected = jax.lax.conv_general_dilated(x, hwio, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(layers.conv2d(params, x, kernel), expected + params["b"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel", [3, 5])
def test_gemm_conv1d_equals_lax_conv(x64, kernel):
    key_x, key_w = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.normal(key_x, (2, 9, 3))
    params = layers.conv1d_init(key_w, kernel, 3, 4)
    wio = params["w"].reshape(kernel, 3, 4)
    expected = jax.lax.conv_general_dilated(x, wio, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
    np.testing.assert_allclose(layers.conv1d(params, x, kernel), expected + params["b"], rtol=1e-12, atol=1e-12)


def test_max_pool2d():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(layers.max_pool2d(x)[0, :, :, 0], [[5, 7], [13, 15]])


@pytest.mark.parametrize("name, shape", [("logreg", (8, 8, 1)), ("mlp", (8, 8, 1)), ("cnn", (8, 8, 1)),
                                         ("cnn", (32, 32, 3)), ("conv1d", (40, 1))])
def test_models_vmap_over_nodes_like_a_loop(name, shape):
    model = ej.models.get_model(name, shape, 10)
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    params = jax.vmap(model.init)(keys)
    x = jax.random.normal(jax.random.PRNGKey(3), (3, 4, *shape))
    batched = jax.vmap(model.apply)(params, x)
    assert batched.shape == (3, 4, 10)
    for i in range(3):
        single = model.apply(jax.tree_util.tree_map(lambda p: p[i], params), x[i])
        np.testing.assert_allclose(batched[i], single, rtol=2e-5, atol=2e-5)


def test_model_shape_errors_name_the_shape():
    with pytest.raises(ValueError, match=r"\(64,\)"):
        ej.models.cnn((64,), 10)
    with pytest.raises(ValueError, match="too short"):
        ej.models.conv1d_net((3, 1), 10)
    with pytest.raises(ValueError, match="swish"):
        ej.models.mlp((4,), 2, activation="swish")
