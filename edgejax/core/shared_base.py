"""The ``shared_base`` local-update execution: dense layers trained by SGD with no per-node weights.

With per-node weights every op of the local update is a small GEMM over ``K`` weight
copies (memory-bound).  For a dense layer ``z = a W + b`` trained by plain SGD from the
shared global ``W``, node ``i``'s weights after ``s`` local steps are::

    W_i(s) = W - lr * sum_{t<s} A_{i,t}^T G_{i,t}        b_i(s) = b - lr * sum_{t<s} 1^T G_{i,t}

where ``A_{i,t} [B, d_in]`` are the layer's inputs on step ``t``'s minibatch and
``G_{i,t} [B, d_out] = d(batch-mean loss)/dz`` (the batch weights / sum(weights) factor
included).  Hence, for step ``s`` with inputs ``a_s`` and output gradient ``g_s``::

    forward   z_s  = a_s W + b - lr * sum_{t<s} (a_s A_{i,t}^T + 1) G_{i,t}
    backward  da_s = g_s W^T    - lr * sum_{t<s} (g_s G_{i,t}^T) A_{i,t}
    aggregate sum_i p_i (W_i(S_i) - W) = -lr * sum_i p_i sum_t A_{i,t}^T G_{i,t}

``a_s W``, ``g_s W^T`` and the aggregation are each ONE large GEMM with the shared
``W`` over all cohort rows ``[K*B, d]`` (the aggregation over ``[K*S*B, d]``); per node
there are only ``[B, S*B]`` Gram matrices against its own history.  No per-node copy of
a weight matrix ever exists.  This is exact (the same function of the same minibatches
as ``per_node``), not an approximation.

Momentum (optax's ``trace``: ``m_t = g_t + mu m_{t-1}``, update ``-lr m_t``; Nesterov:
``-lr (g_t + mu m_t)``) keeps the form, with a coefficient on each past factor::

    W_i(s) = W - lr * sum_{t<s} c(s - t) A_{i,t}^T G_{i,t}
    c(k) = sum_{j<k} mu^j              (heavy ball)
    c(k) = 1 + mu * sum_{j<k} mu^j     (Nesterov);   c(k) = 1 for plain SGD
    SGD with weight decay lam and FedProx's proximal term mu/2 ||w - W||^2 (e = 1 - lr (lam + mu)):
    W_i(s) = beta(s) W - lr * sum_{t<s} e^(s-1-t) A_{i,t}^T G_{i,t},  beta(s) = e^s + mu/(lam+mu) (1 - e^s)
    (beta = 1 without weight decay), so the shared GEMMs are scaled by the scalar beta(s)

The first layer's inputs are the node's own samples ``X_i [M, d_in]``, so when samples
are revisited (``M <= S*B``, e.g. several epochs) its history is kept as sample slots:
``X_i W`` and ``X_i X_i^T`` are computed once per round (one GEMM over ``[K*M, d_in]``)
and gathered, and its aggregation is ``X^T (G scattered onto the slots)`` over ``K*M``
rows instead of ``K*S*B`` (``make_shared_base_delta(sample_space=...)``).

Minibatches are drawn exactly as in ``per_node`` (``node_shuffles`` /
``batch_positions`` with the node's key, or a plan's explicit ``cohort.minibatches``); steps at or past
``min(node_steps(count), budget)`` are masked: they write zero factors, so they change
nothing.  Nodes with ``p_i = 0`` are excluded from the aggregation with a ``where`` (a
NaN in an absent node's data cannot leak in).

What is supported: models with a ``Model.layers`` dense-stack description (logistic
regression, MLPs; activations from ``edgejax.models.zoo.ACTIVATIONS``) and any
``Model.loss`` (its gradient with respect to the outputs is all that is used), local
optimizers ``sgd``, ``momentum``, ``nesterov``, weight decay of every parameter and local
terms that are proximal pulls ``mu/2 ||w - W||^2`` (``LocalTerm.pull``: FedProx) with
``sgd``.  Not supported (use ``per_node``): convolutional models, adaptive local optimizers
(Adam, Adagrad, RMSProp: their update is not linear in the gradients), callable optimizers
(weight decay, clipping and the like cannot be verified), local terms other than pulls
(SCAFFOLD's and FedDyn's linear corrections: each node's correction is a full-size
per-node matrix, so ``a_s c_i`` is a per-node GEMM every step, the very cost this
strategy avoids), weight decay that skips biases, decay or pulls with momentum.  The
strategy only produces the weighted sum of the cohort's changes: an algorithm that reads
every node's trained model, or whose nodes start from their own models (decentralized
training), uses ``per_node``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from edgejax.core.local import LocalTerm, LocalTraining, node_shuffles, step_positions
from edgejax.models.base import Model

SGD_FAMILY = ("sgd", "momentum", "nesterov")


class LayerFactors(NamedTuple):
    """Changes of one dense layer in factor form: inputs ``a [..., R, d_in]`` and scaled output
    gradients ``g [..., R, d_out]``; one node's change is ``w: a^T g``, ``b: 1^T g`` (the learning
    rate and step coefficients are folded into ``g``).  Leading axes index nodes (or buffered
    updates).  A model's changes are ``{layer name: LayerFactors}``.  ``a`` is ``None`` for a
    first layer kept in sample space: its inputs are the node's own samples (``own_samples``),
    which are not copied; ``with_samples`` puts them back."""

    a: jax.Array | None
    g: jax.Array


def own_samples(cohort, d_in: int, dtype) -> jax.Array:
    """The cohort's samples as first-layer inputs ``[K, M, d_in]`` (padding rows included)."""
    return cohort.x.reshape(cohort.x.shape[0], -1, d_in).astype(dtype)


def with_samples(factors: dict, samples: jax.Array) -> dict:
    """``factors`` with every sample-space layer's ``a`` (``None``) set to ``samples``."""
    return {name: f._replace(a=samples) if f.a is None else f for name, f in factors.items()}


def factor_sum(factors: dict) -> dict:
    """The summed change of every node in ``factors``: ``{layer: {w: A^T G, b: 1^T G}}`` with the
    rows of all leading axes stacked (one GEMM per layer)."""
    total = {}
    for name, f in factors.items():
        a, g = f.a.reshape(-1, f.a.shape[-1]), f.g.reshape(-1, f.g.shape[-1])
        total[name] = {"w": a.T @ g, "b": jnp.sum(g, axis=0)}
    return total


def factor_rows(factors: dict) -> dict:
    """Every change in ``factors`` formed on its own: ``{layer: {w: [..., d_in, d_out], b: [..., d_out]}}``
    (the leading axes kept; one batched GEMM per layer)."""
    return {name: {"w": jnp.einsum("...ri,...ro->...io", f.a, f.g), "b": jnp.sum(f.g, axis=-2)}
            for name, f in factors.items()}


def shared_base_unsupported(model: Model, spec: LocalTraining) -> str | None:
    """Why ``shared_base`` cannot be exact for this model and local training, or ``None``."""
    from edgejax.models.zoo import ACTIVATIONS

    if callable(spec.optimizer):
        return ("the local optimizer is a callable; shared_base is exact only for the named "
                f"SGD-family optimizers {SGD_FAMILY}")
    if spec.optimizer not in SGD_FAMILY:
        return (f"local optimizer {spec.optimizer!r} is not SGD-family (its update is not a linear "
                f"function of the gradients); shared_base supports {SGD_FAMILY}")
    if model.layers is None:
        return (f"model {model.name!r} is not a stack of dense layers (Model.layers is None, e.g. a "
                "convolutional model)")
    for layer in model.layers:
        if layer.activation is not None and layer.activation not in ACTIVATIONS:
            return f"layer {layer.name!r} has an unknown activation {layer.activation!r}"
    return None


def shared_base_is_cheaper(model: Model, spec: LocalTraining, max_steps: int) -> bool:
    """The ``auto`` cost rule: the per-node factor history ``S*B*(d_in + d_out)`` summed over
    layers is no larger than the weights ``d_in*d_out`` (then both the Gram work and the
    history traffic stay below what ``per_node`` spends streaming weight copies)."""
    rows = max_steps * spec.batch_size
    history = sum(rows * (layer.d_in + layer.d_out) for layer in model.layers)
    weights = sum(layer.d_in * layer.d_out for layer in model.layers)
    return history <= weights


def terms_unsupported(spec: LocalTraining, terms: tuple[LocalTerm, ...]) -> str | None:
    """Why shared_base cannot include the weight decay or the algorithm's local terms, or ``None``.

    Weight decay (lambda) and proximal pulls (mu, ``LocalTerm.pull``) with plain SGD keep the
    form (see ``_decay``); with momentum they do not, and other terms are not closed-form.
    """
    for term in terms:
        if term.pull is None:
            return (f"the algorithm adds the local term {term.name!r}, which is not a proximal pull "
                    "mu/2 ||w - anchor||^2")
    if spec.weight_decay == "weights":
        return "weight decay that skips biases (weight_decay='weights') is not implemented in shared_base"
    if (spec.weight_decay or terms) and spec.optimizer != "sgd":
        return f"weight decay and proximal pulls are supported with local 'sgd' only (got {spec.optimizer!r})"
    return None


def _decay(spec: LocalTraining, terms: tuple[LocalTerm, ...], hparams: dict, dtype):
    """``(e, lam, mu)``: with SGD, weight decay lam and proximal pulls of total strength mu,
    ``w_{t+1} = e w_t + lr mu W - lr g_t`` with ``e = 1 - lr (lam + mu)``, so
    ``w_s = beta(s) W - lr sum_t e^(s-1-t) g_t`` where ``beta(s) = e^s + mu/(lam+mu) (1 - e^s)``."""
    lr = jnp.asarray(hparams["client_lr"], dtype)
    lam = jnp.asarray(hparams["client_weight_decay"], dtype) if spec.weight_decay else jnp.zeros((), dtype)
    mu = jnp.zeros((), dtype)
    for term in terms:
        mu = mu + jnp.asarray(hparams[term.pull], dtype)
    return 1 - lr * (lam + mu), lam, mu


def _base_scale(e, lam, mu, steps):
    """``beta(s)`` of ``_decay`` (1 without weight decay, whatever mu)."""
    total = lam + mu
    kept = jnp.where(total > 0, mu / jnp.where(total > 0, total, 1), 1)
    return e ** steps + kept * (1 - e ** steps)


def _step_coefficients(name: str, hparams: dict, max_steps: int, dtype, e=None) -> jax.Array:
    """``c(k)`` for ``k = 0..max_steps`` (``c(0) = 0``): the weight of a factor ``k`` steps old
    (``e``: the per-step decay of ``_decay`` for SGD)."""
    k = jnp.arange(max_steps + 1)
    if name == "sgd":
        e = jnp.ones((), dtype) if e is None else e
        return jnp.where(k > 0, e ** jnp.maximum(k - 1, 0).astype(dtype), 0).astype(dtype)
    mu = jnp.asarray(hparams["client_momentum"], dtype)
    powers = jnp.where(k[:-1] == 0, jnp.ones((), dtype), mu ** k[:-1].astype(dtype))
    trace = jnp.concatenate([jnp.zeros((1,), dtype), jnp.cumsum(powers)])  # sum_{j<k} mu^j
    if name == "momentum":
        return trace
    return jnp.where(k > 0, 1 + mu * trace, 0)


def make_shared_base_delta(model: Model, spec: LocalTraining, max_steps: int, shuffles: int,
                           sample_space: bool | None = None, terms: tuple[LocalTerm, ...] = (),
                           own_starts: bool = False, node_factors: bool = False) -> Callable:
    """The ``shared_base`` strategy: ``local_delta(x, cohort, keys, budget, p, hparams)``.

    Returns ``(sum_i p_i (x_i - x), loss [K], steps [K])`` like ``make_per_node_delta``,
    computed as in the module docstring.  Raises ``ValueError`` where that is not exact.
    ``own_starts``: ``x`` holds every node's own start ``[K, ...]`` and the result is every
    node's own change ``[K, ...]`` (``p`` is ignored).  ``node_factors``: from the shared
    ``x``, every node's own change as ``LayerFactors`` per layer (``p`` is ignored; no weight decay
    or pulls, whose change has a dense ``(beta - 1) W`` part; a sample-space first layer's ``a``
    is ``None``: the node's own samples).

    ``sample_space``: for the first layer, whose inputs are the node's own samples, keep
    the history as sample slots and precompute ``X_i W`` and the Gram ``X_i X_i^T`` over
    the node's ``M`` (padded) samples once per round; the aggregation is then
    ``X^T (scatter of G onto slots)`` over ``K*M`` rows instead of ``K*S*B``.  Cheaper
    when samples are revisited (``M <= S*B``, e.g. several epochs), which is the default
    choice (``None``); the same numbers either way.  ``terms``: the algorithm's local terms
    (proximal pulls only, with local ``sgd``).
    """
    reason = shared_base_unsupported(model, spec) or terms_unsupported(spec, terms)
    if reason is None and node_factors and (spec.weight_decay or terms):
        reason = "weight decay and proximal pulls add a dense part to every node's change (no factor form)"
    if reason is not None:
        raise ValueError(f"execution='shared_base' cannot be exact here: {reason}")
    from edgejax.models.zoo import ACTIVATIONS

    stack = model.layers
    n_layers = len(stack)
    S, B = max_steps, spec.batch_size

    def local_delta(x, cohort, keys, budget, p, hparams):
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(x))
        W = [x[layer.name]["w"] for layer in stack]
        bias = [x[layer.name]["b"] for layer in stack]
        lr = jnp.asarray(hparams["client_lr"], dtype)
        if own_starts:
            bias = [b[:, None, :] for b in bias]   # [K, 1, d_out]

        def times(a, l):   # [K, R, d_in] @ W_l (one GEMM over all rows, or each node's own W)
            if own_starts:
                return jnp.einsum("krd,kde->kre", a, W[l])
            return (a.reshape(-1, a.shape[-1]) @ W[l]).reshape(a.shape[0], -1, W[l].shape[1])

        def times_t(g, l):   # [K, R, d_out] @ W_l^T
            if own_starts:
                return jnp.einsum("kre,kde->krd", g, W[l])
            return (g.reshape(-1, g.shape[-1]) @ W[l].T).reshape(g.shape[0], -1, W[l].shape[0])

        e, lam, mu = _decay(spec, terms, hparams, dtype)
        coef = _step_coefficients(spec.optimizer, hparams, S, dtype, e)
        K = cohort.x.shape[0]
        counts = cohort.count
        orders = jax.vmap(node_shuffles, in_axes=(0, 0, None, None))(keys, counts, cohort.x.shape[1], shuffles)
        planned = getattr(cohort, "minibatches", ())   # a plan's explicit minibatches, or ()
        n_steps = jnp.minimum(spec.node_steps(counts), budget)
        loss_grad = jax.vmap(jax.value_and_grad(model.loss.fn))
        M = cohort.x.shape[1]
        flat_x = cohort.x.reshape(K, M, stack[0].d_in)
        samples = (M <= S * B) if sample_space is None else sample_space
        if samples:  # first layer in sample space: X W and X X^T once per round
            X = own_samples(cohort, stack[0].d_in, dtype)
            xw0 = times(X, 0)
            gram0 = jnp.einsum("kmd,knd->kmn", X, X)

        def gram_apply(h_left, h_right, q, cs, plus_one):
            # sum_t cs[t] (q h_left_t^T [+ 1]) h_right_t, per node: [K,B,d] x [K,S,B,d] -> [K,B,d']
            gram = jnp.einsum("kbd,ktcd->kbtc", q, h_left)
            if plus_one:
                gram = gram + 1
            return jnp.einsum("kbtc,ktce->kbe", gram * cs[None, None, :, None], h_right)

        def step(carry, s):
            hist_a, hist_g, loss_sum = carry
            slots, wb = jax.vmap(step_positions, in_axes=(None, None, 0, 0, 0))(spec, s, counts, orders, planned)
            a = jnp.take_along_axis(flat_x, slots[:, :, None], axis=1).astype(dtype)
            yb = jnp.take_along_axis(cohort.y, slots, axis=1)
            cs = coef[jnp.clip(s - jnp.arange(S), 0, S)]  # c(s - t) for t < s, 0 otherwise
            beta = _base_scale(e, lam, mu, s.astype(dtype))  # W_i(s) = beta W - lr sum(...)
            inputs, pre = [], []
            for l, layer in enumerate(stack):  # forward
                inputs.append(a)
                if l == 0 and samples:
                    shared = beta * (jnp.take_along_axis(xw0, slots[:, :, None], axis=1) + bias[0])
                    rows = jnp.take_along_axis(gram0, slots[:, :, None], axis=1)  # [K, B, M]
                    gram = jax.vmap(lambda r, h: r[:, h])(rows, hist_a[0]) + 1  # [K, B, S, B]
                    z = shared - lr * jnp.einsum("kbtc,ktce->kbe", gram * cs[None, None, :, None], hist_g[0])
                else:
                    shared = beta * (times(a, l) + bias[l])
                    z = shared - lr * gram_apply(hist_a[l], hist_g[l], a, cs, True)
                pre.append(z)
                a = z if layer.activation is None else ACTIVATIONS[layer.activation](z)
            loss, g = loss_grad(a, yb, wb)
            active = s < n_steps
            mask = active[:, None, None]
            new_a, new_g = list(hist_a), list(hist_g)
            for l in reversed(range(n_layers)):  # backward
                layer = stack[l]
                if layer.activation is not None:
                    g = jax.vjp(ACTIVATIONS[layer.activation], pre[l])[1](g)[0]
                if l == 0 and samples:  # the slots (a masked step's G is zero, so it adds nothing)
                    new_a[0] = hist_a[0].at[:, s].set(slots.astype(jnp.int32))
                else:
                    new_a[l] = hist_a[l].at[:, s].set(jnp.where(mask, inputs[l], 0))
                new_g[l] = hist_g[l].at[:, s].set(jnp.where(mask, g, 0))
                if l > 0:
                    shared = beta * times_t(g, l)
                    g = shared - lr * gram_apply(hist_g[l], hist_a[l], g, cs, False)
            loss_sum = loss_sum + jnp.where(active, loss, 0.0)
            return (tuple(new_a), tuple(new_g), loss_sum), None

        hist_a = tuple(jnp.zeros((K, S, B) if l == 0 and samples else (K, S, B, layer.d_in),
                                 jnp.int32 if l == 0 and samples else dtype)
                       for l, layer in enumerate(stack))
        hist_g = tuple(jnp.zeros((K, S, B, layer.d_out), dtype) for layer in stack)
        init = (hist_a, hist_g, jnp.zeros((K,), dtype))
        (hist_a, hist_g, loss_sum), _ = jax.lax.scan(step, init, jnp.arange(S))

        # aggregation: -lr sum_i p_i sum_t c(n_i - t) A_{i,t}^T G_{i,t}, one GEMM per layer
        # (own starts: each node's own -lr sum_t c(n_i - t) A_{i,t}^T G_{i,t}, with p_i = 1)
        final = coef[jnp.clip(n_steps[:, None] - jnp.arange(S)[None, :], 0, S)]  # [K, S]
        per_node = own_starts or node_factors
        present = jnp.ones((K,), bool) if per_node else (p > 0)
        weight = jnp.ones((K,), dtype) if per_node else p.astype(dtype)
        scale = jnp.where(present[:, None], weight[:, None] * final, 0)[:, :, None, None]
        # the shared part: sum_i p_i (beta(n_i) - 1) W (zero without weight decay)
        shrinks = jnp.where(present, weight * (_base_scale(e, lam, mu, n_steps.astype(dtype)) - 1), 0)
        if own_starts:
            combine = lambda ga, gg: jnp.einsum("krd,kre->kde", ga, gg)  # noqa: E731
            shrink = lambda w: shrinks.reshape((K,) + (1,) * (w.ndim - 1)) * w  # noqa: E731
            total = lambda g: jnp.sum(g, axis=1)  # noqa: E731
        else:
            combine = lambda ga, gg: ga.reshape(-1, ga.shape[-1]).T @ gg.reshape(-1, gg.shape[-1])  # noqa: E731
            shrink = lambda w: jnp.sum(shrinks) * w  # noqa: E731
            total = lambda g: jnp.sum(g.reshape(-1, g.shape[-1]), axis=0)  # noqa: E731
        factors = []
        for l, layer in enumerate(stack):
            if l == 0 and samples:  # X^T (G scattered onto the sample slots), over K*M rows
                onehot = jax.nn.one_hot(hist_a[0].reshape(K, S * B), M, dtype=dtype)
                gs = (hist_g[0] * scale).reshape(K, S * B, layer.d_out)
                gsum = jnp.where(present[:, None, None], jnp.einsum("kjm,kje->kme", onehot, gs), 0)
                factors.append((jnp.where(present[:, None, None], X, 0), gsum))
                continue
            ga = jnp.where(present[:, None, None, None], hist_a[l], 0).reshape(K, S * B, layer.d_in)
            gg = jnp.where(present[:, None, None, None], hist_g[l] * scale, 0).reshape(K, S * B, layer.d_out)
            factors.append((ga, gg))
        steps = n_steps.astype(jnp.float32)
        loss = loss_sum / jnp.maximum(steps, 1.0)
        if node_factors:   # a sample-space first layer's inputs are the cohort's own samples: not copied
            return {layer.name: LayerFactors(None if l == 0 and samples else a, -lr * g)
                    for l, (layer, (a, g)) in enumerate(zip(stack, factors))}, loss, steps
        delta = {}
        for l, (layer, (a, g)) in enumerate(zip(stack, factors)):
            b = bias[l][:, 0] if own_starts else bias[l]
            delta[layer.name] = {"w": shrink(W[l]) - lr * combine(a, g), "b": shrink(b) - lr * total(g)}
        return delta, loss, steps

    return local_delta
