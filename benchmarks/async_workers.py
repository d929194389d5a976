"""One side of the asynchronous speed comparison, run as a fresh process (``benchmarks/asynchronous.py``
starts them, pinned to one core, alternating sides).

The W2 population: N clients, each holding 8 MNIST images drawn (with replacement across clients)
from the 8,000-image training part of MNIST t10k, an MLP 784-200-200-10, 4 local SGD steps of
batch 4 (lr 0.05); every client's duration is fixed, drawn from U(5, 1000) s; ``concurrency``
clients are in flight, all starting at t = 0, and a finished client's slot goes to a client
drawn uniformly from the idle ones (itself included).  Rules: FedBuff (K = 10, weights
``(1 + s)^-1/2``, server lr 1) or FedAsync (polynomial, alpha 0.6, a = 0.5).

``kernel``: edgejax, one compiled chunk of ``updates`` ticks (one arrival each), its state
donated as ``Simulation.run`` does; the first call (compilation included) is reported
separately, the next ``BLOCKS`` calls are timed and their median reported.  ``loop`` and
``torch``: a plain heapq event loop training the same clients on the same kind of schedule, one
update at a time, the way event-loop simulators run it: in NumPy (hand-written backward), or in
PyTorch the way a PyTorch user writes it (``nn.Sequential``, autograd, ``optim.SGD``, one
thread), timed the same way: after a first block of ``updates`` updates, the median of
``BLOCKS`` blocks.  Each prints one JSON line.
"""
from __future__ import annotations

import argparse
import heapq
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IMAGES, LABELS = "mnist-t10k-images-idx3-ubyte.gz", "mnist-t10k-labels-idx1-ubyte.gz"
LR, STEPS, BATCH, SAMPLES, BUFFER, ALPHA = 0.05, 4, 4, 8, 10, 0.6
BLOCKS = 3   # timed blocks of ``updates`` each side, after a first (compile / warm-up) block; the median is reported


def population(n: int, seed: int, data_dir: Path):
    """``(x [N, 8, 784] float32 in [0, 1], y [N, 8], durations [N])`` and the 2,000 test images."""
    from edgejax.data.datasets import read_idx

    images = read_idx(data_dir / IMAGES).reshape(-1, 784).astype(np.float32) / 255.0
    labels = read_idx(data_dir / LABELS).astype(np.int32)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 8000, size=(n, SAMPLES))
    durations = rng.uniform(5.0, 1000.0, size=n)
    return images[rows], labels[rows], durations, images[8000:], labels[8000:]


def run_kernel(n, concurrency, rule, updates, seed, data_dir):
    import jax
    import jax.numpy as jnp

    import edgejax as ej
    from edgejax.data.federated import FederatedData, NodeData, pad_test

    x, y, durations, tx, ty = population(n, seed, data_dir)
    data = FederatedData(train=NodeData(jnp.asarray(x), jnp.asarray(y), jnp.full((n,), SAMPLES, jnp.int32)),
                         local_test=None, test=pad_test(tx, ty), num_classes=10, name="mnist-w2")
    model = ej.models.mlp((784,), 10, hidden=(200, 200))
    algorithm = (ej.FedBuff(buffer_size=BUFFER, concurrency=concurrency) if rule == "fedbuff"
                 else ej.FedAsync(concurrency=concurrency))
    sim = ej.Simulation(model, data, algorithm, ej.LocalTraining(batch_size=BATCH, steps=STEPS), clients_per_round=1,
                        system=ej.SystemModel(durations=durations[:, None]))
    hp = sim.hparams({"client_lr": LR, **({"alpha": ALPHA} if rule == "fedasync" else {})})
    chunk = jax.jit(sim.run_rounds, static_argnums=3, donate_argnums=0)   # as Simulation.run's chunks
    start = time.perf_counter()
    state = sim.init(jax.random.PRNGKey(seed), hp)
    state, _ = jax.block_until_ready(chunk(state, sim.data, hp, updates))
    first = time.perf_counter() - start
    blocks, staleness = [], []
    for _ in range(BLOCKS):
        start = time.perf_counter()
        state, metrics = jax.block_until_ready(chunk(state, sim.data, hp, updates))
        blocks.append(1e3 * (time.perf_counter() - start) / float(np.sum(metrics["participants"])))
        staleness.append(float(np.nanmean(metrics["staleness_mean"])))
    return {"ms_per_update": float(np.median(blocks)), "block_ms": blocks, "first_chunk_s": first,
            "updates": updates, "mean_staleness": float(np.mean(staleness)), "execution": sim.execution,
            "test_accuracy": float(sim.evaluate(state, sim.data)["test_accuracy"])}


def _init_mlp(rng):
    sizes = [(784, 200), (200, 200), (200, 10)]
    return [(rng.normal(size=s).astype(np.float32) * np.float32(np.sqrt(2.0 / s[0])), np.zeros(s[1], np.float32))
            for s in sizes]


def _local_update(model, x, y, rng):
    """4 SGD steps of batch 4 (softmax cross-entropy, ReLU), from a copy of ``model``."""
    w = [(a.copy(), b.copy()) for a, b in model]
    for _ in range(STEPS):
        pick = rng.permutation(SAMPLES)[:BATCH]
        h0, yb = x[pick], y[pick]
        h1 = np.maximum(h0 @ w[0][0] + w[0][1], 0)
        h2 = np.maximum(h1 @ w[1][0] + w[1][1], 0)
        z = h2 @ w[2][0] + w[2][1]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(BATCH), yb] -= 1
        g3 = p / BATCH
        g2 = (g3 @ w[2][0].T) * (h2 > 0)
        g1 = (g2 @ w[1][0].T) * (h1 > 0)
        for (a, b), h, g in zip(w, (h0, h1, h2), (g1, g2, g3)):
            a -= LR * (h.T @ g)
            b -= LR * g.sum(axis=0)
    return w


def torch_trainer(x, y):
    """``(to_model, local_update)`` for the PyTorch loop: the model as ``[(weight [out, in],
    bias)]`` tensors, trained by ``nn.Sequential`` + autograd + ``optim.SGD`` on one thread."""
    import torch

    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Linear(784, 200), torch.nn.ReLU(), torch.nn.Linear(200, 200),
                              torch.nn.ReLU(), torch.nn.Linear(200, 10))
    layers = [m for m in net if isinstance(m, torch.nn.Linear)]
    tx, ty = torch.from_numpy(x), torch.from_numpy(y).long()

    def to_model(model):
        return [(torch.from_numpy(a.T.copy()), torch.from_numpy(b)) for a, b in model]

    def local_update(model, i, rng):
        with torch.no_grad():
            for layer, (w, b) in zip(layers, model):
                layer.weight.copy_(w)
                layer.bias.copy_(b)
        opt = torch.optim.SGD(net.parameters(), lr=LR)
        for _ in range(STEPS):
            pick = torch.from_numpy(rng.permutation(SAMPLES)[:BATCH])
            loss = torch.nn.functional.cross_entropy(net(tx[i][pick]), ty[i][pick])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [(layer.weight.detach().clone(), layer.bias.detach().clone()) for layer in layers]

    return to_model, local_update


def run_loop(n, concurrency, rule, updates, seed, data_dir, backend="numpy"):
    x, y, durations, _, _ = population(n, seed, data_dir)
    rng = np.random.default_rng(seed + 1)
    c = n if concurrency is None else concurrency
    order = rng.permutation(n)
    idle = list(order[c:])
    if backend == "torch":
        to_model, local_update = torch_trainer(x, y)
    else:
        to_model, local_update = (lambda m: m), (lambda m, i, r: _local_update(m, x[i], y[i], r))
    server, version = to_model(_init_mlp(rng)), 0
    versions, holders = {0: server}, {0: c}
    downloaded = {int(i): 0 for i in order[:c]}
    heap = [(float(durations[i]), int(i)) for i in order[:c]]
    heapq.heapify(heap)
    buffer, count, staleness, warmup = None, 0, [], updates   # as the kernel side: a first block, then BLOCKS timed
    marks = []   # the clock at the start of every timed block, and at the end
    for step in range(warmup + BLOCKS * updates):
        if step >= warmup and (step - warmup) % updates == 0:
            marks.append(time.perf_counter())
        t, i = heapq.heappop(heap)
        v = downloaded.pop(i)
        base = versions[v]
        trained = local_update(base, i, rng)
        s = version - v
        staleness.append(s)
        if rule == "fedasync":
            a = ALPHA * (s + 1.0) ** -0.5
            server = [((1 - a) * sw + a * tw, (1 - a) * sb + a * tb) for (sw, sb), (tw, tb) in zip(server, trained)]
            version += 1
        else:
            weight = (1.0 + s) ** -0.5
            delta = [(weight * (tw - bw), weight * (tb - bb)) for (tw, tb), (bw, bb) in zip(trained, base)]
            buffer = delta if buffer is None else [(a + d, b + e) for (a, b), (d, e) in zip(buffer, delta)]
            count += 1
            if count == BUFFER:
                server = [(sw + bw / BUFFER, sb + bb / BUFFER) for (sw, sb), (bw, bb) in zip(server, buffer)]
                buffer, count, version = None, 0, version + 1
        holders[v] -= 1
        if not holders[v] and v != version:
            del versions[v], holders[v]
        versions[version] = server
        idle.append(i)
        j = int(idle.pop(int(rng.integers(len(idle)))))
        downloaded[j] = version
        holders[version] = holders.get(version, 0) + 1
        heapq.heappush(heap, (t + float(durations[j]), j))
    marks.append(time.perf_counter())
    blocks = [1e3 * (b - a) / updates for a, b in zip(marks, marks[1:])]
    return {"ms_per_update": float(np.median(blocks)), "block_ms": blocks, "updates": updates, "backend": backend,
            "mean_staleness": float(np.mean(staleness[warmup:]))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("side", choices=("kernel", "loop", "torch"))
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--rule", choices=("fedbuff", "fedasync"), required=True)
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    a = parser.parse_args()
    concurrency = None if a.concurrency >= a.nodes else a.concurrency
    args = (a.nodes, concurrency, a.rule, a.updates, a.seed, a.data_dir)
    result = run_kernel(*args) if a.side == "kernel" else run_loop(*args, backend="torch" if a.side == "torch" else "numpy")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
