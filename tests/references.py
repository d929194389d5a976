"""Float64 NumPy references written from the papers' equations (no JAX)."""
from __future__ import annotations

import numpy as np


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def logreg_loss_grad(w, b, x, y, num_classes):
    """Mean softmax cross-entropy of ``x W + b`` and its gradient."""
    p = softmax(x @ w + b)
    onehot = np.eye(num_classes)[y]
    loss = -np.mean(np.log(p[np.arange(len(y)), y]))
    g = (p - onehot) / len(y)
    return loss, x.T @ g, g.sum(axis=0)


def local_gd(w, b, x, y, num_classes, lr, steps):
    """``steps`` full-batch gradient steps on one node's data (local SGD with batch = node data)."""
    for _ in range(steps):
        _, gw, gb = logreg_loss_grad(w, b, x, y, num_classes)
        w, b = w - lr * gw, b - lr * gb
    return w, b


def fedavg_delta(w, b, nodes, weights, num_classes, lr, steps):
    """McMahan et al. 2017: Delta = sum_i p_i (x_i - x), p_i = weights_i / sum weights."""
    p = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    for p_i, (x, y) in zip(p, nodes):
        wi, bi = local_gd(w, b, x, y, num_classes, lr, steps)
        dw += p_i * (wi - w)
        db += p_i * (bi - b)
    return dw, db


def reddi_server(kind, deltas, x0, lr, b1, b2, tau, bias_correction=False):
    """Reddi et al. 2021, Algorithm 2 (FedAdagrad / FedAdam / FedYogi) applied to a sequence of Deltas.

    m_t = b1 m + (1-b1) D;  v_t per kind;  x <- x + lr m / (sqrt(v) + tau);  m_-1 = 0, v_-1 = tau^2.
    """
    x, m, v = x0.copy(), np.zeros_like(x0), np.full_like(x0, tau ** 2)
    for t, d in enumerate(deltas, start=1):
        m = b1 * m + (1 - b1) * d
        if kind == "adagrad":
            v = v + d ** 2
        elif kind == "adam":
            v = b2 * v + (1 - b2) * d ** 2
        else:  # yogi
            v = v - (1 - b2) * d ** 2 * np.sign(v - d ** 2)
        m_hat, v_hat = m, v
        if bias_correction:
            m_hat = m / (1 - b1 ** t)
            if kind != "adagrad":
                v_hat = v / (1 - b2 ** t)
        x = x + lr * m_hat / (np.sqrt(v_hat) + tau)
    return x


def momentum_server(deltas, x0, lr, beta):
    """FedAvgM (Hsu et al. 2019): v <- beta v + Delta; x <- x + lr v."""
    x, v = x0.copy(), np.zeros_like(x0)
    for d in deltas:
        v = beta * v + d
        x = x + lr * v
    return x


def masked_mlp_loss_grad(params, masks, x, y, num_classes, outputs=None):
    """Mean cross-entropy of the one-hidden-layer ReLU MLP ``relu(x W0 + b0) W1 + b1`` run with
    ``params * masks`` and its gradient with respect to ``params`` (zero outside the masks).

    ``outputs``: a 0/1 vector of the classes in the softmax (``None``: all); the softmax runs over
    those classes only.  ``params``/``masks``: ``[W0, b0, W1, b1]``.
    """
    w0, b0, w1, b1 = (p * m for p, m in zip(params, masks))
    pre = x @ w0 + b0
    h = np.maximum(pre, 0)
    z = h @ w1 + b1
    keep = np.ones(num_classes, bool) if outputs is None else np.asarray(outputs) > 0
    zk = z[:, keep]
    pk = softmax(zk)
    labels = np.searchsorted(np.flatnonzero(keep), y)
    loss = -np.mean(np.log(pk[np.arange(len(y)), labels]))
    gz = np.zeros_like(z)
    gz[:, keep] = (pk - np.eye(keep.sum())[labels]) / len(y)
    gw1, gb1 = h.T @ gz, gz.sum(axis=0)
    gpre = (gz @ w1.T) * (pre > 0)
    gw0, gb0 = x.T @ gpre, gpre.sum(axis=0)
    return loss, [g * m for g, m in zip((gw0, gb0, gw1, gb1), masks)]


def distill_logit_grad(kind, z, target, temperature=1.0):
    """Gradient with respect to the logits ``z [B, C]`` of FedMD's digest distance to ``target``:
    ``l1`` mean |z - t|, ``l2`` mean (z - t)^2, ``kl`` T^2 mean_b KL(softmax(t/T) || softmax(z/T))."""
    b, c = z.shape
    if kind == "l1":
        return np.sign(z - target) / (b * c)
    if kind == "l2":
        return 2 * (z - target) / (b * c)
    return temperature * (softmax(z / temperature) - softmax(target / temperature)) / b


def fedmd_round(models, public, node_data, active, num_classes, kind, distill_lr, distill_steps, distill_batch,
                lr, local_steps, temperature=1.0):
    """One round of FedMD (Li & Wang 2019, Algorithm 1) for logistic-regression nodes ``(W_i, b_i)``:
    communicate logits on ``public``, average them over the active nodes (the consensus),
    digest (``distill_steps`` SGD steps on public rows ``(s B + j) mod M``), revisit
    (``local_steps`` full-batch gradient steps on the node's data).  Absent nodes keep their model."""
    m = len(public)
    on = [i for i, a in enumerate(active) if a]
    consensus = np.mean([public @ models[i][0] + models[i][1] for i in on], axis=0)
    new = list(models)
    for i in on:
        w, b = models[i]
        for s in range(distill_steps):
            idx = (s * distill_batch + np.arange(distill_batch)) % m
            xb = public[idx]
            g = distill_logit_grad(kind, xb @ w + b, consensus[idx], temperature)
            w, b = w - distill_lr * xb.T @ g, b - distill_lr * g.sum(axis=0)
        x, y = node_data[i]
        new[i] = local_gd(w, b, x, y, num_classes, lr, local_steps)
    return new


# --------------------------------------------------------------------------------------
# Personalized FL (logistic regression nodes (W, b); full-batch local steps)
# --------------------------------------------------------------------------------------


def ditto_personal(v, w, x, y, num_classes, lr, lam, steps):
    """Ditto's personal update (Li et al. 2021, Algorithm 1): ``steps`` gradient steps on
    ``F_i(v) + lam/2 ||v - w||^2`` from ``v``, with ``w`` the round's global model."""
    (vw, vb), (ww, wb) = v, w
    for _ in range(steps):
        _, gw, gb = logreg_loss_grad(vw, vb, x, y, num_classes)
        vw, vb = vw - lr * (gw + lam * (vw - ww)), vb - lr * (gb + lam * (vb - wb))
    return vw, vb


def apfl_node(w, v, alpha, x, y, num_classes, lr, steps, alpha_lr=None):
    """APFL's local steps (Deng et al. 2020, Algorithm 1) from the global ``w`` and the node's ``v``,
    ``alpha``: ``vbar = alpha v + (1 - alpha) w``; ``w -= lr grad f(w)``; ``v -= lr alpha grad f(vbar)``;
    with ``alpha_lr``: ``alpha = clip(alpha - alpha_lr <v - w, grad f(vbar)>, 0, 1)`` (old values throughout)."""
    (ww, wb), (vw, vb) = w, v
    for _ in range(steps):
        mw, mb = alpha * vw + (1 - alpha) * ww, alpha * vb + (1 - alpha) * wb
        _, gw, gb = logreg_loss_grad(ww, wb, x, y, num_classes)
        _, hw, hb = logreg_loss_grad(mw, mb, x, y, num_classes)
        new_alpha = alpha
        if alpha_lr is not None:
            inner = np.sum((vw - ww) * hw) + np.sum((vb - wb) * hb)
            new_alpha = float(np.clip(alpha - alpha_lr * inner, 0.0, 1.0))
        ww, wb = ww - lr * gw, wb - lr * gb
        vw, vb = vw - lr * alpha * hw, vb - lr * alpha * hb
        alpha = new_alpha
    return (ww, wb), (vw, vb), alpha


def fedrep_node(body, head, x, y, num_classes, lr, head_steps, body_steps):
    """FedRep's local update (Collins et al. 2021, Algorithm 1) for the one-hidden-layer ReLU MLP
    (body ``[W0, b0]``, head ``[W1, b1]``): ``head_steps`` gradient steps on the head with the body
    fixed, then ``body_steps`` on the body with the new head fixed (full batch)."""
    ones = [np.ones_like(p) for p in (*body, *head)]
    for _ in range(head_steps):
        _, g = masked_mlp_loss_grad([*body, *head], ones, x, y, num_classes)
        head = [p - lr * gi for p, gi in zip(head, g[2:])]
    for _ in range(body_steps):
        _, g = masked_mlp_loss_grad([*body, *head], ones, x, y, num_classes)
        body = [p - lr * gi for p, gi in zip(body, g[:2])]
    return body, head
