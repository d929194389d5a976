"""from_flax: linen and nnx modules as edgejax models equal the module's own apply and train under FedAvg."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import edgejax as ej


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(64, 16, rngs=rngs)
        self.norm = nnx.LayerNorm(16, rngs=rngs)
        self.out = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.norm(self.hidden(x.reshape(x.shape[0], -1)))))


def _x(seed=0, batch=5):
    return jax.random.normal(jax.random.PRNGKey(seed), (batch, 8, 8, 1))


def test_linen_mlp_equals_its_own_apply_and_vmaps():
    x = _x()
    model = ej.models.from_flax(LinenMLP(), x)
    assert (model.input_shape, model.num_classes, model.name) == ((8, 8, 1), 10, "flax_LinenMLP")
    params = model.init(jax.random.PRNGKey(3))
    expected = LinenMLP().apply({"params": LinenMLP().init(jax.random.PRNGKey(3), x)["params"]}, x)
    np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-6, atol=1e-6)
    stacked = jax.vmap(model.init)(jax.random.split(jax.random.PRNGKey(0), 3))
    out = jax.vmap(model.apply, in_axes=(0, None))(stacked, x)
    assert out.shape == (3, 5, 10)
    np.testing.assert_allclose(out[1], LinenMLP().apply({"params": jax.tree_util.tree_map(lambda a: a[1], stacked)}, x),
                               rtol=1e-6, atol=1e-6)


def test_linen_cnn_equals_its_own_apply_and_warns_about_vmapped_convolutions():
    x = _x(1)
    with pytest.warns(UserWarning, match="grouped convolution"):
        model = ej.models.from_flax(LinenCNN(), x)
    params = model.init(jax.random.PRNGKey(1))
    np.testing.assert_allclose(model.apply(params, x), LinenCNN().apply({"params": params}, x), rtol=1e-6, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ej.models.from_flax(LinenMLP(), x)      # no convolution, no warning


def test_nnx_instance_and_factory_equal_the_module():
    x = _x(2)
    module = NnxMLP(nnx.Rngs(4))
    model = ej.models.from_flax(module, x)
    params = model.init(jax.random.PRNGKey(0))
    np.testing.assert_allclose(model.apply(params, x), module(x), rtol=1e-6, atol=1e-6)
    factory = ej.models.from_flax(lambda rngs: NnxMLP(rngs), x)
    assert factory.name == "flax_NnxMLP"
    p7 = factory.init(jax.random.PRNGKey(7))
    np.testing.assert_allclose(factory.apply(p7, x), NnxMLP(nnx.Rngs(7))(x), rtol=1e-6, atol=1e-6)
    assert not np.allclose(p7["out"]["kernel"], factory.init(jax.random.PRNGKey(8))["out"]["kernel"])
    grads = jax.jit(jax.grad(lambda p: jnp.sum(factory.apply(p, x) ** 2)))(p7)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(p7)


def test_mutable_state_is_refused_naming_it():
    class LinenBN(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.BatchNorm(use_running_average=True)(x.reshape(x.shape[0], -1)))

    class NnxBN(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(64, 3, rngs=rngs)
            self.bn = nnx.BatchNorm(3, rngs=rngs)

        def __call__(self, x):
            return self.bn(self.lin(x.reshape(x.shape[0], -1)))

    class LinenDropout(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dropout(0.5, deterministic=False)(nn.Dense(3)(x.reshape(x.shape[0], -1)))

    with pytest.raises(ValueError, match="batch_stats"):
        ej.models.from_flax(LinenBN(), _x())
    with pytest.raises(ValueError, match=r"bn\.mean \(BatchStat\)"):
        ej.models.from_flax(NnxBN(nnx.Rngs(0)), _x())
    with pytest.raises(ValueError, match="random stream"):
        ej.models.from_flax(LinenDropout(), _x())
    with pytest.raises(ValueError, match="num_classes=5"):
        ej.models.from_flax(LinenMLP(), _x(), num_classes=5)


def test_fedavg_trains_a_flax_model():
    dataset = ej.data.load_digits()
    data, _ = ej.federate(dataset, 10, ej.data.IID(), seed=0)
    model = ej.models.from_flax(LinenMLP(), dataset.x_train[:2])
    sim = ej.Simulation(model, data, ej.FedAvg(), ej.LocalTraining(batch_size=10, epochs=1), clients_per_round=5)
    hp = sim.hparams({"client_lr": 0.1})
    state = sim.init(jax.random.PRNGKey(0), hp)
    before = float(sim.evaluate(state, data)["test_loss"])
    state, metrics = jax.jit(sim.run_rounds, static_argnums=3)(state, data, hp, 8)
    after = sim.evaluate(state, data)
    assert float(after["test_loss"]) < 0.6 * before
    assert float(after["test_accuracy"]) > 0.7
    assert float(metrics["train_loss"][-1]) < float(metrics["train_loss"][0])
