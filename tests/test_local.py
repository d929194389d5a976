"""On-device minibatch sampling of the local update: epochs without replacement, partial batches."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from edgejax.core.local import batch_positions, node_shuffles


@pytest.mark.parametrize("count, batch, epochs", [(7, 3, 2), (6, 3, 3), (2, 5, 2), (1, 1, 4)])
def test_every_epoch_visits_each_sample_once(count, batch, epochs):
    spec = ej.LocalTraining(batch_size=batch, epochs=epochs)
    m = 9
    order = node_shuffles(jax.random.PRNGKey(count), jnp.int32(count), m, epochs)
    steps = int(spec.node_steps(jnp.int32(count)))
    assert steps == epochs * -(-count // batch)
    per_epoch = [[] for _ in range(epochs)]
    spe = -(-count // batch)
    for t in range(steps):
        slots, weights = batch_positions(spec, jnp.int32(t), jnp.int32(count), order)
        assert int(weights.sum()) == min(batch, count - (t % spe) * batch)
        per_epoch[t // spe] += [int(s) for s, w in zip(slots, weights) if w > 0]
    for visited in per_epoch:
        assert sorted(visited) == list(range(count))


def test_epochs_are_shuffled_independently():
    order = np.asarray(node_shuffles(jax.random.PRNGKey(0), jnp.int32(50), 50, 2))
    assert sorted(order[0]) == sorted(order[1]) == list(range(50))
    assert not np.array_equal(order[0], order[1])


def test_steps_mode_schedule_covers_the_smallest_node():
    spec = ej.LocalTraining(batch_size=4, steps=10, epochs=None)
    max_steps, shuffles = spec.schedule(np.array([3, 20]))
    assert max_steps == 10 and shuffles == 10  # the 3-sample node needs a fresh epoch every step
    max_steps, shuffles = spec.schedule(np.array([16, 20]))
    assert shuffles == 3  # ceil(10 steps / 4 steps per epoch)
    # a node with fewer samples than the batch uses all of them in every step
    order = node_shuffles(jax.random.PRNGKey(1), jnp.int32(3), 20, shuffles)
    slots, weights = batch_positions(spec, jnp.int32(5), jnp.int32(3), order)
    assert sorted(int(s) for s, w in zip(slots, weights) if w > 0) == [0, 1, 2]


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam", "adagrad", "rmsprop"])
def test_every_local_optimizer_trains(optimizer):
    from conftest import make_data

    data = make_data([8, 8, 8], dtype=np.float32, seed=5)[0]
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    sim = ej.Simulation(model, data, ej.FedAvg(), ej.LocalTraining(batch_size=4, epochs=2, optimizer=optimizer))
    losses = sim.run(8, eval_every=8).rounds["train_loss"]
    assert losses[-1] < losses[0]


def test_callable_optimizer_reads_traced_hparams():
    import optax
    from conftest import make_data

    data = make_data([6, 6], dtype=np.float32, seed=6)[0]
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    local = ej.LocalTraining(batch_size=3, optimizer=lambda h: optax.adamw(h["client_lr"], weight_decay=1e-2))
    sim = ej.Simulation(model, data, ej.FedAvg(), local)
    a = sim.run(2, hparams={"client_lr": 0.01}, eval_every=2).final_state.server.params
    b = sim.run(2, hparams={"client_lr": 0.02}, eval_every=2).final_state.server.params
    assert not np.allclose(a["out"]["w"], b["out"]["w"])


@pytest.mark.parametrize("mode", ["all", "weights"])
def test_weight_decay_can_skip_biases(x64, mode):
    """One SGD step with coupled decay lam: w <- w - lr (g_w + lam w); b decays only with ``all``."""
    from conftest import make_data
    from references import logreg_loss_grad
    from edgejax.core.local import make_local_update

    data, xs, ys = make_data([5], seed=21)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    spec = ej.LocalTraining(batch_size=5, steps=1, weight_decay=mode)
    update = make_local_update(model, spec, max_steps=1, shuffles=1)
    params = jax.tree_util.tree_map(lambda p: p + 0.5, model.init(jax.random.PRNGKey(0)))
    hp = {"client_lr": jnp.asarray(0.3), "client_weight_decay": jnp.asarray(0.1)}
    out = update(params, data.train.x[0], data.train.y[0], data.train.count[0], jax.random.PRNGKey(1),
                 jnp.int32(1), hp).params
    w, b = np.asarray(params["out"]["w"]), np.asarray(params["out"]["b"])
    _, gw, gb = logreg_loss_grad(w, b, xs[0], ys[0], 3)
    np.testing.assert_allclose(out["out"]["w"], w - 0.3 * (gw + 0.1 * w), rtol=1e-12)
    b_decay = 0.1 * b if mode == "all" else 0.0
    np.testing.assert_allclose(out["out"]["b"], b - 0.3 * (gb + b_decay), rtol=1e-12)
