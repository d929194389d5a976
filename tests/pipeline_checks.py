"""Multi-device checks for ``tests/test_pipeline.py``, run in a subprocess on 8 host CPU devices.

Prints one JSON object: for the GPipe pipeline, the loss's relative error and every gradient
leaf's ``max |g - g_ref| / max |g_ref|`` against ``jax.value_and_grad`` of the unpartitioned
model (float32 and float64, S in {2, 4}, M in {1, 4, 5}: 5 does not divide the batch of 12);
for the hybrid execution, the largest difference of any float leaf of the simulation state and
of the train loss after 3 rounds against ``per_node`` (FedAvg, D-PSGD; meshes 4x2 and 2x4; FedProx on 4x2), and
the node counts of the stacked first-layer weights in the compiled round (a cohort spread over
``replicas`` holds ``ceil(K / R)`` nodes per device).
"""
from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("EDGEJAX_COMPILATION_CACHE", "0")

import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

import edgejax as ej  # noqa: E402
from edgejax.algorithms.decentralized import DPSGD  # noqa: E402
from edgejax.network.spec import Topology  # noqa: E402
from edgejax.parallel import Pipelined, pipeline_value_and_grad  # noqa: E402
from conftest import make_data  # noqa: E402

MODEL = ej.models.mlp((6,), 3, hidden=(5, 7, 4), activation="tanh")


def rel(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-300))


def pipeline_errors(dtype) -> dict:
    params = jax.tree_util.tree_map(lambda p: p.astype(dtype), MODEL.init(jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(12, 6)), dtype)
    y = jnp.asarray(rng.integers(0, 3, 12), jnp.int32)
    w = jnp.asarray([1, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1], dtype)
    loss, grads = jax.value_and_grad(lambda p: MODEL.loss.fn(MODEL.apply(p, x), y, w))(params)
    out = {}
    for stages in (2, 4):
        mesh = Mesh(np.array(jax.devices()[:stages]), ("stages",))
        for microbatches in (1, 4, 5):
            got_loss, got = jax.jit(pipeline_value_and_grad(MODEL, mesh, None, microbatches))(params, x, y, w)
            out[f"S{stages}_M{microbatches}"] = {
                "loss": rel(got_loss, loss),
                "grads": {"/".join(str(getattr(k, "key", k)) for k in path): rel(g, r) for (path, g), r in
                          zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree_util.tree_leaves(grads))},
                "grad_dtype": str(jax.tree_util.tree_leaves(got)[0].dtype)}
    return out


def simulate(alg, execution, cohort):
    data = make_data([5, 7, 6, 4, 8], dim=6, num_classes=3, seed=0, dtype=np.float32)[0]
    sim = ej.Simulation(MODEL, data, alg, ej.LocalTraining(batch_size=4, steps=3, optimizer="momentum",
                                                           execution=execution), clients_per_round=cohort)
    hp = sim.hparams({"client_lr": 0.1})
    state = sim.init(jax.random.PRNGKey(0), hp)
    round_fn = jax.jit(sim.round).lower(state, data, hp).compile()   # compiled once, run below
    # the cohort's per-device size: the leading dim of every stack of first-layer weights [n, 6, 5]
    stacks = sorted({int(n) for n in re.findall(r"f32\[(\d+),6,5\]", round_fn.as_text())})
    for _ in range(3):
        state, metrics = round_fn(state, data, hp)
    return state, float(metrics["train_loss"]), sim.execution, stacks


def hybrid_errors() -> dict:
    out, references = {}, {}
    for replicas, stages in ((4, 2), (2, 4)):
        mesh = Mesh(np.array(jax.devices()).reshape(replicas, stages), ("replicas", "stages"))
        algorithms = [("fedavg", ej.FedAvg(), 3), ("dpsgd", DPSGD(Topology("ring")), None)]
        if replicas == 4:  # a local term (FedProx's proximal pull) on one mesh
            algorithms.append(("fedprox", ej.get_algorithm("fedprox"), 3))
        for name, alg, cohort in algorithms:
            if name not in references:
                references[name] = simulate(alg, "per_node", cohort)
            ref, ref_loss, _, _ = references[name]
            got, got_loss, execution, stacks = simulate(alg, Pipelined(mesh, microbatches=2), cohort)
            leaves = [(a, b) for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref))
                      if jnp.issubdtype(b.dtype, jnp.floating)]
            out[f"{name}_R{replicas}_S{stages}"] = {
                "state": max(float(jnp.max(jnp.abs(a - b))) for a, b in leaves), "float_leaves": len(leaves),
                "loss": abs(got_loss - ref_loss), "ref_loss": ref_loss, "execution": execution,
                "nodes": cohort or 5, "replicas": replicas, "weight_stacks": stacks}
    return out


def clock_check() -> dict:
    """A planned pipeline charges the clock its time: with the same devices and steps, the
    round takes ``(ratio - 1) * steps * batch / speed`` longer than on one device."""
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("replicas", "stages"))
    plan = ej.parallel.plan_stages(MODEL, [1e6, 4e5], batch_size=4, microbatches=2, bandwidth=1e6)
    times = {}
    for name, execution in (("plain", "per_node"), ("pipelined", Pipelined.from_plan(mesh, plan))):
        data = make_data([5, 7, 6, 4, 8], dim=6, num_classes=3, seed=0, dtype=np.float32)[0]
        sim = ej.Simulation(MODEL, data, ej.FedAvg(), ej.LocalTraining(batch_size=4, steps=3, execution=execution),
                            clients_per_round=3)
        state = sim.init(jax.random.PRNGKey(0), sim.default_hparams())
        state, metrics = jax.jit(sim.round)(state, data, sim.default_hparams())
        times[name] = float(metrics["round_time_s"])
        speed = float(state.system.profiles.speed[0])
        compute = float(np.asarray(sim.payload.compute))
    return {**times, "ratio": plan.ratio_to_single_device, "compute": compute,
            "expected": times["plain"] + (plan.ratio_to_single_device - 1) * 3 * 4 / speed}


def main() -> None:
    report = {"devices": jax.device_count(), "pipeline": {"float32": pipeline_errors(jnp.float32)}}
    with jax.enable_x64(True):
        report["pipeline"]["float64"] = pipeline_errors(jnp.float64)
    report["hybrid"] = hybrid_errors()
    report["clock"] = clock_check()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
