"""LEAF Shakespeare with FedAvg and FedAdam, scaled to a CPU: accuracy per round and ms per round
of edgejax against a plain PyTorch loop over clients with the same LSTM, side by side.

Setting: ``load_shakespeare(tinyshakespeare.txt, stride=8, max_roles=40)`` (LEAF's task: one node
per speaking role, the next character after an 80-character window, LEAF's 80-symbol vocabulary),
the natural split (40 nodes); LEAF's model shape scaled down: embedding 8, two LSTM layers of 64
units (LEAF: 256), a dense layer on the last step; 10 clients a round drawn uniformly, 50 local SGD
steps of batch 10 at LEAF's client learning rate 0.8, the sample-weighted mean (FedAvg) or Adam
on the server (FedAdam, Reddi et al. 2021, edgejax's defaults: lr 0.01, b1 0.9, b2 0.99, tau 1e-3, no
bias correction; the PyTorch side writes the same update by hand).  Test accuracy on the
roles' held-out windows every 5 rounds.

Each side is a fresh process pinned to core 1 (``taskset -c 1``), the sides alternating:
``kernel`` (edgejax: the cohort vmapped, one compiled chunk of 5 rounds) and ``torch`` (one
thread; ``nn.Embedding`` + ``nn.LSTM`` + ``nn.Linear``, autograd, ``optim.SGD``, the global
``state_dict`` loaded into the client model, a Python loop over the cohort, the weighted mean
or FedAdam's update on the server).  ms per round: the median over the chunks (kernel) or
rounds (torch) after the first, evaluation excluded; first-chunk seconds include compilation.
The kernel side also times the shared-weight ceiling (``ceiling_ms``): one model trained on the
cohort's batches stacked, the cost of a round if the cohort's models were one.

Results: ``benchmarks/results/shakespeare-<device>.json`` / ``.md``.  Run::

    python benchmarks/shakespeare.py            # about 10 min on a 2-core CPU
    python benchmarks/shakespeare.py --quick    # a smoke run (*-quick files)
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
TEXT = HERE.parents[1] / "shared" / "data" / "tinyshakespeare.txt"
RESULTS_DIR = HERE / "results"
ROLES, STRIDE, COHORT, STEPS, BATCH, LR, EVERY = 40, 8, 10, 50, 10, 0.8, 5
EMBED, HIDDEN = 8, (64, 64)
SERVER = {"fedavg": None, "fedadam": {"lr": 0.01, "b1": 0.9, "b2": 0.99, "tau": 1e-3}}   # edgejax's "adam" defaults


def federated(seed: int):
    import edgejax as ej

    dataset = ej.data.load_shakespeare(TEXT, stride=STRIDE, max_roles=ROLES)
    return ej.federate(dataset, None, ej.data.Natural(), seed=seed)[0]


def run_kernel(rule: str, rounds: int, seed: int) -> dict:
    import jax

    import edgejax as ej

    data = federated(seed)
    model = ej.models.char_lstm((80,), 80, embed_dim=EMBED, hidden=HIDDEN)
    algorithm = ej.FedAvg() if rule == "fedavg" else ej.FedAvg(server_optimizer="adam")
    sim = ej.Simulation(model, data, algorithm, ej.LocalTraining(batch_size=BATCH, steps=STEPS),
                        clients_per_round=COHORT)
    hp = sim.hparams({"client_lr": LR})
    chunk = jax.jit(sim.run_rounds, static_argnums=3, donate_argnums=0)
    evaluate = jax.jit(sim.evaluate)
    state = sim.init(jax.random.PRNGKey(seed), hp)
    accuracy, times, first = [], [], None
    for c in range(rounds // EVERY):
        start = time.perf_counter()
        state, _ = jax.block_until_ready(chunk(state, sim.data, hp, EVERY))
        elapsed = time.perf_counter() - start
        if c == 0:
            first = elapsed
        else:
            times.append(1e3 * elapsed / EVERY)
        accuracy.append(float(evaluate(state, sim.data)["test_accuracy"]))
    return {"ms_per_round": float(np.median(times)), "first_chunk_s": first, "accuracy": accuracy,
            "execution": sim.execution, "ceiling_ms_per_round": ceiling_ms(model, sim.data.train, rounds)}


def ceiling_ms(model, train, rounds: int) -> float:
    """The shared-weight ceiling of a round: ONE model trained for ``STEPS`` SGD steps on batches of
    ``COHORT x BATCH`` rows (the cohort's samples together), one compiled ``lax.scan``; the median
    ms over ``rounds`` calls after a compiling one.  What a round would cost if the cohort's
    models were one."""
    import jax
    import jax.numpy as jnp
    import optax

    x = jnp.asarray(train.x[:COHORT, :BATCH * STEPS]).reshape(COHORT, STEPS, BATCH, -1).swapaxes(0, 1)
    y = jnp.asarray(train.y[:COHORT, :BATCH * STEPS]).reshape(COHORT, STEPS, BATCH).swapaxes(0, 1)
    x, y = x.reshape(STEPS, COHORT * BATCH, -1), y.reshape(STEPS, COHORT * BATCH)
    ones = jnp.ones((COHORT * BATCH,), jnp.float32)

    @jax.jit
    def steps(params):
        def one(p, batch):
            grads = jax.grad(lambda q: model.loss.fn(model.apply(q, batch[0]), batch[1], ones))(p)
            return optax.apply_updates(p, jax.tree_util.tree_map(lambda g: -LR * g, grads)), None
        return jax.lax.scan(one, params, (x, y))[0]

    params = model.init(jax.random.PRNGKey(0))
    jax.block_until_ready(steps(params))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(steps(params))
        times.append(1e3 * (time.perf_counter() - start))
    return float(np.median(times))


def run_torch(rule: str, rounds: int, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    data = federated(seed)
    x, y = np.asarray(data.train.x).astype(np.int64), np.asarray(data.train.y).astype(np.int64)
    counts = np.asarray(data.train.count)
    tx = torch.from_numpy(np.asarray(data.test.x).astype(np.int64))
    ty = torch.from_numpy(np.asarray(data.test.y).astype(np.int64))
    test_mask = torch.from_numpy(np.asarray(data.test.mask) > 0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(80, EMBED)
            self.lstm = torch.nn.LSTM(EMBED, HIDDEN[0], num_layers=len(HIDDEN), batch_first=True)
            self.out = torch.nn.Linear(HIDDEN[-1], 80)

        def forward(self, chars):
            h, _ = self.lstm(self.embed(chars))
            return self.out(h[:, -1])

    client, server = Net(), Net()
    adam = SERVER[rule]   # Reddi et al.'s FedAdam: moments of Delta, v from tau^2, no bias correction
    moments = None if adam is None else [(torch.zeros_like(p), torch.full_like(p, adam["tau"] ** 2))
                                         for p in server.parameters()]
    rng = np.random.default_rng(seed)
    accuracy, times, first = [], [], None
    for r in range(rounds):
        start = time.perf_counter()
        cohort = rng.choice(len(counts), size=COHORT, replace=False)
        weights = counts[cohort] / counts[cohort].sum()
        total = [torch.zeros_like(p) for p in server.parameters()]
        for node, w in zip(cohort, weights):
            client.load_state_dict(server.state_dict())
            opt = torch.optim.SGD(client.parameters(), lr=LR)
            order = rng.permutation(counts[node])
            for s in range(STEPS):
                rows = torch.from_numpy(order[(s * BATCH) % len(order):][:BATCH])
                loss = torch.nn.functional.cross_entropy(client(torch.from_numpy(x[node])[rows]),
                                                         torch.from_numpy(y[node])[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                for t, pc, ps in zip(total, client.parameters(), server.parameters()):
                    t += float(w) * (pc - ps)
        with torch.no_grad():
            for i, (ps, t) in enumerate(zip(server.parameters(), total)):
                if moments is None:
                    ps += t
                    continue
                m, v = moments[i]
                m.mul_(adam["b1"]).add_((1 - adam["b1"]) * t)
                v.mul_(adam["b2"]).add_((1 - adam["b2"]) * t * t)
                ps += adam["lr"] * m / (v.sqrt() + adam["tau"])
        elapsed = time.perf_counter() - start
        if r == 0:
            first = elapsed
        else:
            times.append(1e3 * elapsed)
        if (r + 1) % EVERY == 0:
            with torch.no_grad():
                correct = sum(int(((server(tx[i:i + 4096]).argmax(1) == ty[i:i + 4096]) & test_mask[i:i + 4096]).sum())
                              for i in range(0, len(tx), 4096))
            accuracy.append(correct / int(test_mask.sum()))
    return {"ms_per_round": float(np.median(times)), "first_round_s": first, "accuracy": accuracy,
            "round_ms": times}


def _side(side: str, rule: str, rounds: int, seed: int) -> dict:
    command = ["taskset", "-c", "1", sys.executable, str(Path(__file__)), "--side", side, "--rule", rule,
               "--rounds", str(rounds), "--seed", str(seed)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    from common import report_header  # noqa: E402

    lines = report_header("LEAF Shakespeare", report) + [report["setting"], ""]
    lines += ["| rule | edgejax ms/round | PyTorch loop ms/round | PyTorch / edgejax | shared-weight ceiling "
              "ms/round | edgejax / ceiling | edgejax first chunk s (compile + 5 rounds) | execution |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rule, r in report["rules"].items():
        ms = {side: " / ".join(f"{v['ms_per_round']:.1f}" for v in r[side]) or "-" for side in ("kernel", "torch")}
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        ceiling = float(np.median([v["ceiling_ms_per_round"] for v in r["kernel"]]))
        kernel = float(np.median([v["ms_per_round"] for v in r["kernel"]]))
        lines.append(f"| {rule} | {ms['kernel']} | {ms['torch']} | {ratio} | {ceiling:.1f} | {kernel / ceiling:.2f}x | "
                     f"{r['kernel'][0]['first_chunk_s']:.1f} | {r['kernel'][0]['execution']} |")
    lines += ["", f"Test accuracy every {EVERY} rounds (first run of each side):", "",
              "| rule | side | " + " | ".join(f"round {EVERY * (i + 1)}" for i in range(report["rounds"] // EVERY))
              + " |", "| --- | --- |" + " --- |" * (report["rounds"] // EVERY)]
    for rule, r in report["rules"].items():
        for side in ("kernel", "torch"):
            if r[side]:
                lines.append(f"| {rule} | {'edgejax' if side == 'kernel' else 'PyTorch loop'} | "
                             + " | ".join(f"{a:.3f}" for a in r[side][0]["accuracy"]) + " |")
    lines += ["", report["notes"], ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--side", choices=("kernel", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--rule", choices=tuple(SERVER), default="fedavg", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=30, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.side:
        print(json.dumps((run_kernel if args.side == "kernel" else run_torch)(args.rule, args.rounds, args.seed)))
        return None
    if not TEXT.is_file():
        raise SystemExit(f"the LEAF Shakespeare benchmark reads {TEXT}, which is absent")
    from common import device_info, finish_report, load_average  # noqa: E402

    start, load_start = time.perf_counter(), load_average()
    rounds, reps = (10, 1) if args.quick else (30, 2)
    torch = importlib.util.find_spec("torch") is not None
    report = {"device": device_info(), "date": datetime.date.today().isoformat(), "rounds": rounds,
              "command": "python benchmarks/shakespeare.py" + (" --quick" if args.quick else ""),
              "setting": (f"tinyshakespeare, stride {STRIDE}, the {ROLES} largest roles (natural split); char LSTM "
                          f"embedding {EMBED}, {len(HIDDEN)} x {HIDDEN[0]} units; {COHORT} clients a round, {STEPS} "
                          f"SGD steps of batch {BATCH}, client lr {LR}; FedAdam server lr 0.01, b1 0.9, b2 0.99, tau 1e-3; "
                          f"{rounds} rounds; each side a fresh process pinned to core 1, the sides alternating, "
                          f"{reps} runs each (values in turn)."),
              "rules": {}}
    for rule in SERVER:
        runs = {"kernel": [], "torch": []}
        for _ in range(reps):
            for side in ("kernel", "torch") if torch else ("kernel",):
                runs[side].append(_side(side, rule, rounds, args.seed))
        ratio = (float(np.median([r["ms_per_round"] for r in runs["torch"]])
                       / np.median([r["ms_per_round"] for r in runs["kernel"]])) if torch else None)
        report["rules"][rule] = {**runs, "ratio": ratio}
        print(f"{rule}: kernel {[r['ms_per_round'] for r in runs['kernel']]} ms/round, torch "
              f"{[r['ms_per_round'] for r in runs['torch']]}; accuracy {runs['kernel'][0]['accuracy'][-1]:.3f}",
              flush=True)
    report["notes"] = ("One seed. The two sides draw different cohorts and minibatches (their own generators) and "
                       "initialise differently (edgejax: LEAF's Glorot-uniform weights and forget-gate bias 1; "
                       "PyTorch: its uniform(-1/sqrt(H), 1/sqrt(H)) default), so their accuracy curves agree in "
                       "trend, not value. " +
                       ("" if torch else "No PyTorch loop: torch is not installed. ") +
                       "This CPU may be shared by other processes: see the load averages; compare the ratios, "
                       "measured side by side, not the absolute times.")
    return finish_report("shakespeare", report, markdown, RESULTS_DIR, args.quick, start, load_start)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
