"""Asynchronous training: the vectorised ticks against a plain sequential event simulation, the
update rules against float64 NumPy references, zero delay against synchronous FedAvg."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from edgejax.system import SystemModel, profiles_from_arrays
from conftest import make_data
from references import local_gd

C, LR, STEPS = 3, 0.3, 2
SIZES = [5, 4, 6, 5, 3, 5]


def _profiles(speeds):
    n = len(speeds)
    return profiles_from_arrays(np.asarray(speeds, float), np.full(n, 1e9), np.full(n, 1e9), latency=0.0,
                                energy_per_sample=1e-3, energy_per_byte=0.0)


def _sim(algorithm, speeds, cohort=None, execution="auto", **system):
    data, xs, ys = make_data(SIZES, seed=30)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    sim = ej.Simulation(model, data, algorithm,
                        ej.LocalTraining(batch_size=max(SIZES), steps=STEPS, execution=execution),
                        clients_per_round=cohort, system=SystemModel(profiles=_profiles(speeds), **system))
    return sim, xs, ys


# FedBuff's two trainings: at arrival from the downloaded model (per_node), or at download,
# kept as factors until the arrival (shared_base)
AT_DOWNLOAD = {"fedbuff": "per_node", "fedbuff_at_download": "shared_base", "fedbuff_median": "per_node",
               "fedbuff_median_at_download": "shared_base"}


def _trains_at_download(sim):
    return sim.algorithm.name.startswith("fedbuff") and sim.algorithm.trains_at_download(sim.context)


def _flat(params):
    return np.concatenate([np.asarray(params["out"]["w"]).ravel(), np.asarray(params["out"]["b"])])


def _unflat(v, shape):
    d = int(np.prod(shape))
    return v[:d].reshape(shape), v[d:]


def event_simulation(rule, x0, durations, xs, ys, until, depth=None):
    """The meaning, written as a plain sequential event loop (no vectorisation): nodes compute
    from the model they downloaded; arrivals in (finish time, id) order; every arrival at a time
    T is applied before the nodes arrived at T download again.  ``durations``: one duration per
    node ``[N]``, or node i's job k lasting ``durations[i, k % J]`` (``[N, J]``).  Returns the event
    log ``[(time, node, downloaded version, staleness, dropped)]`` and the server model after each
    time; ``.after_event[k]`` is the model after the first k events."""
    shape = (xs[0].shape[1], C)
    trace = np.asarray(durations, float).reshape(len(xs), -1)
    jobs = {i: 1 for i in range(len(xs))}
    versions, finish = {0: x0.copy()}, {i: trace[i, 0] for i in range(len(xs))}
    downloaded = {i: 0 for i in finish}
    x, version, log, models, state = x0.copy(), 0, [], Models(), None
    models.after_event.append(x0.copy())
    while len(log) < until:
        t = min(finish.values())
        arrived = sorted(i for i, f in finish.items() if f == t)
        for i in arrived:
            start = versions[downloaded[i]]
            w, b = local_gd(*_unflat(start, shape), xs[i], ys[i], C, LR, STEPS)
            y = np.concatenate([w.ravel(), b])
            staleness = version - downloaded[i]
            dropped = depth is not None and staleness >= depth
            log.append((t, i, downloaded[i], staleness, dropped))
            if not dropped:
                x, advanced, state = rule(x, y, start, staleness, state)
                version += advanced
                versions[version] = x.copy()
            models.after_event.append(x.copy())
        for i in arrived:
            downloaded[i], finish[i] = version, t + trace[i, jobs[i] % trace.shape[1]]
            jobs[i] += 1
        models.append((t, x.copy()))
    return log, models


class Models(list):
    """``[(time, model after every arrival at that time)]`` plus ``after_event``."""

    def __init__(self):
        super().__init__()
        self.after_event = []


def fedasync_rule(alpha, a):
    def rule(x, y, start, s, state):
        mix = alpha * (s + 1.0) ** (-a)
        return (1 - mix) * x + mix * y, 1, state
    return rule


def fedbuff_rule(k, lr, exponent=0.5):
    def rule(x, y, start, s, state):
        total, count = state if state is not None else (np.zeros_like(x), 0)
        total, count = total + (1 + s) ** -exponent * (y - start), count + 1
        if count == k:
            return x + lr * total / k, 1, (np.zeros_like(x), 0)
        return x, 0, (total, count)
    return rule


def fedbuff_median_rule(k, lr, exponent=0.5):
    """FedBuff whose flush takes the coordinate-wise median of the K weighted buffered updates."""
    def rule(x, y, start, s, state):
        rows = (state or []) + [(1 + s) ** -exponent * (y - start)]
        if len(rows) == k:
            return x + lr * np.median(rows, axis=0), 1, []
        return x, 0, rows
    return rule


def _ticks(sim, hp, ticks):
    state = sim.init(jax.random.PRNGKey(0), hp)
    step = jax.jit(sim.round)
    out = []
    for _ in range(ticks):
        state, metrics = step(state, sim.data, hp)
        out.append((state, metrics))
    return out


# distinct speeds; then ties (equal speeds finish together every time)
SPEEDS = {"distinct": [1.0, 1.3, 0.7, 2.1, 1.7, 0.9], "tied": [1.0, 2.0, 1.0, 2.0, 1.0, 0.5]}


@pytest.mark.parametrize("speeds", list(SPEEDS))
@pytest.mark.parametrize("rule", ["fedasync", "fedbuff", "fedbuff_at_download", "fedbuff_median",
                                  "fedbuff_median_at_download"])
def test_ticks_equal_the_sequential_event_simulation(x64, speeds, rule):
    aggregator = ej.CoordinateMedian() if "median" in rule else ej.Mean()
    algorithm = (ej.FedAsync(staleness="polynomial", log_events=True) if rule == "fedasync"
                 else ej.FedBuff(buffer_size=4, log_events=True, aggregator=aggregator))
    sim, xs, ys = _sim(algorithm, SPEEDS[speeds], execution=AT_DOWNLOAD.get(rule, "auto"))
    assert _trains_at_download(sim) == rule.endswith("_at_download")
    rule = rule.removesuffix("_at_download")
    hp = sim.hparams({"client_lr": LR, **({"alpha": 0.7, "staleness_a": 0.5} if rule == "fedasync" else {})})
    state0 = sim.init(jax.random.PRNGKey(0), hp)
    durations = np.asarray(state0.system.busy_until)
    reference_rule = {"fedasync": fedasync_rule(0.7, 0.5), "fedbuff": fedbuff_rule(4, 1.0),
                      "fedbuff_median": fedbuff_median_rule(4, 1.0)}[rule]
    log, models = event_simulation(reference_rule, _flat(state0.server.params), durations, xs, ys, until=30)
    ticks = _ticks(sim, hp, len(models))
    events = []
    for (state, metrics), (t, x) in zip(ticks, models):
        assert float(metrics["sim_time_s"]) == t
        np.testing.assert_allclose(_flat(state.server.params), x, rtol=1e-11, atol=1e-13)
        nodes, stale = np.asarray(metrics["event_node"]), np.asarray(metrics["event_staleness"])
        events += [(t, int(i), int(s)) for i, s in zip(nodes, stale) if i >= 0]
    assert events == [(t, i, s) for t, i, _, s, _ in log[:len(events)]]
    assert len(events) >= 30
    if speeds == "tied":
        assert max(sum(1 for e in events if e[0] == t) for t, _ in models) >= 3


def test_a_cohort_smaller_than_the_ties_spills_into_the_next_tick_with_the_same_meaning(x64):
    algorithm = ej.FedAsync(staleness="polynomial", log_events=True)
    full, xs, ys = _sim(algorithm, SPEEDS["tied"])
    small, _, _ = _sim(algorithm, SPEEDS["tied"], cohort=2)
    hp = full.hparams({"client_lr": LR})
    a = _ticks(full, hp, 6)
    b = _ticks(small, small.hparams({"client_lr": LR}), 14)
    applied = lambda ticks: [(int(i), int(s)) for _, m in ticks for i, s in   # noqa: E731
                             zip(np.asarray(m["event_node"]), np.asarray(m["event_staleness"])) if i >= 0]
    ea, eb = applied(a), applied(b)
    n = min(len(ea), len(eb))
    assert n >= 12 and ea[:n] == eb[:n]
    # the server after the same number of applied updates is the same model
    counts_b = np.cumsum([float(m["participants"]) for _, m in b])
    counts_a = np.cumsum([float(m["participants"]) for _, m in a])
    for i, count in enumerate(counts_a[:4]):
        j = int(np.flatnonzero(counts_b == count)[0])
        np.testing.assert_allclose(_flat(b[j][0].server.params), _flat(a[i][0].server.params), rtol=1e-12)


@pytest.mark.parametrize("rule", ["fedasync", "fedbuff", "fedbuff_at_download"])
def test_an_update_older_than_the_buffer_is_dropped_and_counted(x64, rule):
    # node 5 is 20x slower: by its first arrival the server has moved more than 4 versions on
    speeds = [1.0, 1.0, 1.0, 1.0, 1.0, 0.05]
    algorithm = (ej.FedAsync(buffer_depth=4, log_events=True) if rule == "fedasync"
                 else ej.FedBuff(buffer_size=2, buffer_depth=2, log_events=True))
    sim, xs, ys = _sim(algorithm, speeds, execution=AT_DOWNLOAD.get(rule, "auto"))
    hp = sim.hparams({"client_lr": LR})
    state0 = sim.init(jax.random.PRNGKey(0), hp)
    reference, depth = (fedasync_rule(0.6, 0.5), 4) if rule == "fedasync" else (fedbuff_rule(2, 1.0), 2)
    log, models = event_simulation(reference, _flat(state0.server.params),
                                   np.asarray(state0.system.busy_until), xs, ys, until=25, depth=depth)
    ticks = _ticks(sim, hp, len(models))
    for (state, _), (_, x) in zip(ticks, models):
        np.testing.assert_allclose(_flat(state.server.params), x, rtol=1e-11, atol=1e-13)
    dropped = sum(float(m["dropped_stale"]) for _, m in ticks)
    assert dropped == sum(1 for e in log if e[4]) >= 1


def test_fedbuff_with_all_nodes_in_the_buffer_and_equal_durations_is_fedavg(x64):
    """Zero delay: every node arrives at once with staleness 0 .. and the buffer (K = N) flushes
    the uniform mean of the changes, which is FedAvg with uniform weights."""
    sim, _, _ = _sim(ej.FedBuff(buffer_size=len(SIZES)), [1.0] * len(SIZES))
    fedavg, _, _ = _sim(ej.FedAvg(weighting="uniform"), [1.0] * len(SIZES))
    hp, hp_avg = sim.hparams({"client_lr": LR}), fedavg.hparams({"client_lr": LR})
    a = _ticks(sim, hp, 3)
    b = _ticks(fedavg, hp_avg, 3)
    for (sa, ma), (sb, _) in zip(a, b):
        np.testing.assert_allclose(_flat(sa.server.params), _flat(sb.server.params), rtol=1e-12, atol=1e-14)
        assert float(ma["server_version"]) == float(sa.round)


def test_async_sgd_dcasgd_rules_against_numpy(x64):
    """One tick with every node arriving at once (equal speeds): updates applied in id order with
    staleness 0, 1, 2, ..."""
    speeds = [1.0] * len(SIZES)
    for algorithm, hp_over in ((ej.AsyncSGD(staleness_aware=True), {"server_lr": 0.8}),
                               (ej.DCASGD(), {"server_lr": 0.5, "dc_lambda": 0.3})):
        data, xs, ys = make_data(SIZES, seed=30)
        model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
        sim = ej.Simulation(model, data, algorithm, ej.LocalTraining(batch_size=max(SIZES), steps=1),
                            system=SystemModel(profiles=_profiles(speeds)))
        hp = sim.hparams({"client_lr": LR, **hp_over})
        state = sim.init(jax.random.PRNGKey(0), hp)
        x0 = _flat(state.server.params)
        shape = (xs[0].shape[1], C)
        x = x0.copy()
        for i in range(len(SIZES)):
            w, b = local_gd(*_unflat(x0, shape), xs[i], ys[i], C, LR, 1)
            y = np.concatenate([w.ravel(), b])
            if algorithm.name == "async_sgd":
                x = x + 0.8 / max(i, 1) * (y - x0)
            else:
                g = (x0 - y) / LR
                x = x - 0.5 * (g + 0.3 * g * g * (x - x0))
        state, metrics = jax.jit(sim.round)(state, data, hp)
        np.testing.assert_allclose(_flat(state.server.params), x, rtol=1e-11, atol=1e-13)
        assert float(metrics["staleness_max"]) == len(SIZES) - 1


def test_staleness_functions_and_the_offset():
    hp = {"staleness_a": 0.5, "staleness_b": 2.0}
    s = jnp.arange(5)
    np.testing.assert_allclose(ej.algorithms.staleness_weight("polynomial", s, hp), (np.arange(5) + 1.0) ** -0.5)
    np.testing.assert_allclose(ej.algorithms.staleness_weight("hinge", s, hp), [1, 1, 1, 1 / 1.5, 1 / 2])
    np.testing.assert_allclose(ej.algorithms.staleness_weight("constant", s, hp), 1.0)
    with pytest.raises(ValueError, match="staleness function"):
        ej.FedAsync(staleness="exponential")


def test_asynchronous_runs_are_deterministic_and_follow_availability_and_tiers():
    data, _, _ = make_data([6] * 12, dtype=np.float32, seed=31)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    system = SystemModel(profiles=ej.system.tiered_profiles(12, seed=0), jitter=True,
                         availability=ej.Availability("markov", mean_on=3, mean_off=3))
    sim = ej.Simulation(model, data, ej.FedBuff(buffer_size=3, staleness_bins=4),
                        ej.LocalTraining(batch_size=3, epochs=1), clients_per_round=4, system=system)
    a, b = sim.run(30, eval_every=10, seed=1), sim.run(30, eval_every=10, seed=1)
    for k in a.rounds:
        np.testing.assert_array_equal(a.rounds[k], b.rounds[k])
    assert np.all(np.diff(a.rounds["sim_time_s"]) >= 0)
    hist = sum(a.rounds[f"staleness_hist_{i}"].sum() for i in range(4))
    assert hist == a.rounds["participants"].sum() > 0


def test_adpsgd_equals_a_sequential_replay_of_its_events(x64):
    """AD-PSGD (Lian et al. 2018): each arrival averages with its partner, then adds the update
    computed from the model it read at its start; replayed in order with the logged partners."""
    speeds = SPEEDS["tied"]
    sim, xs, ys = _sim(ej.ADPSGD(ej.Topology("ring"), log_events=True), speeds)
    hp = sim.hparams({"client_lr": LR})
    state = sim.init(jax.random.PRNGKey(0), hp)
    n, shape = len(SIZES), (xs[0].shape[1], C)
    x = np.stack([_flat(jax.tree_util.tree_map(lambda a: a[i], state.nodes.params)) for i in range(n)])
    xhat = x.copy()
    finish, durations = np.asarray(state.system.busy_until).copy(), np.asarray(state.system.busy_until).copy()
    step = jax.jit(sim.round)
    partners_seen = set()
    for _ in range(12):
        state, metrics = step(state, sim.data, hp)
        t = finish.min()
        arrived = [int(i) for i in np.asarray(metrics["event_node"]) if i >= 0]
        assert arrived == sorted(np.flatnonzero(finish == t).tolist())
        for i, j in zip(arrived, [int(j) for j in np.asarray(metrics["event_partner"]) if j >= 0]):
            assert abs(i - j) in (1, n - 1)   # a ring neighbour
            partners_seen.add((i, j))
            w, b = local_gd(*_unflat(xhat[i], shape), xs[i], ys[i], C, LR, STEPS)
            mean = (x[i] + x[j]) / 2
            x[j], x[i] = mean, mean + np.concatenate([w.ravel(), b]) - xhat[i]
        for i in arrived:
            xhat[i], finish[i] = x[i], t + durations[i]
        got = np.stack([_flat(jax.tree_util.tree_map(lambda a: a[i], state.nodes.params)) for i in range(n)])
        np.testing.assert_allclose(got, x, rtol=1e-11, atol=1e-13)
    assert len({j for _, j in partners_seen}) > 3   # partners vary
    np.testing.assert_allclose(float(metrics["consensus_distance"]),
                               np.mean(np.sum((x - x.mean(0)) ** 2, axis=1)), rtol=1e-10)


def test_staleness_follows_the_configured_durations(x64):
    """Five nodes of duration ~1.2 s and one of ~12 s: the fast nodes arrive together, in id order,
    so node i's staleness is i (i + 1 when the slow node's update landed in between); the slow
    node (id 5) sees the 5 x 10 fast updates of its ten times longer duration: about 50."""
    speeds = [10.0] * 5 + [1.0]           # compute = STEPS * batch / speed; the links are ~free
    sim, _, _ = _sim(ej.FedAsync(buffer_depth=64, log_events=True), speeds)
    hp = sim.hparams({"client_lr": LR})
    per_node = {}
    for _, metrics in _ticks(sim, hp, 25):
        for i, s in zip(np.asarray(metrics["event_node"]), np.asarray(metrics["event_staleness"])):
            if i >= 0:
                per_node.setdefault(int(i), []).append(int(s))
    slow_arrivals = len(per_node[5])
    assert slow_arrivals >= 2
    for i in range(5):
        extra = np.asarray(per_node[i]) - i
        assert set(extra) <= {0, 1} and extra.sum() <= slow_arrivals
    # its first update started with everyone at t = 0 and lands just before the fast nodes' tenth
    # (their link time accumulates): 9 x 5 updates; afterwards it always sees 10 x 5
    assert per_node[5][0] in (45, 50) and set(per_node[5][1:]) == {50}


# ----- windows, per-job durations, bounded concurrency ------------------------------------------

def _trace_sim(algorithm, trace, cohort=None, sizes=SIZES, execution="auto", **system):
    data, xs, ys = make_data(sizes, seed=30)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    sim = ej.Simulation(model, data, algorithm,
                        ej.LocalTraining(batch_size=max(sizes), steps=STEPS, execution=execution),
                        clients_per_round=cohort,
                        system=SystemModel(profiles=_profiles([1.0] * len(sizes)), durations=trace, **system))
    return sim, xs, ys


def _events(metrics):
    nodes, stale = np.asarray(metrics["event_node"]), np.asarray(metrics["event_staleness"])
    return [(int(i), int(s)) for row_i, row_s in zip(nodes.reshape(-1, nodes.shape[-1]),
                                                    stale.reshape(-1, stale.shape[-1]))
            for i, s in zip(row_i, row_s) if i >= 0]


@pytest.mark.parametrize("seed", range(10))
def test_random_schedules_equal_the_sequential_event_simulation(x64, seed):
    """Property test: random small populations, per-job duration traces with many ties (small
    integers), random cohort caps, FedAsync or FedBuff (trained at arrival, or at download for
    seeds 6 and 8), windows of 1, 3 or 64 arrivals: the applied events and the server model equal
    the plain event loop's."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 8))
    sizes = [int(v) for v in rng.integers(3, 7, size=n)]
    trace = rng.integers(1, 5, size=(n, int(rng.integers(1, 4)))).astype(float)
    cohort = int(rng.integers(1, n + 1))
    window = [1, 3, 64][seed % 3]
    k = int(rng.integers(1, n + 1))
    algorithm = (ej.FedAsync(window=window, log_events=True) if seed % 2
                 else ej.FedBuff(buffer_size=k, window=window, log_events=True))
    at_download = seed >= 6 and not seed % 2
    sim, xs, ys = _trace_sim(algorithm, trace, cohort=cohort, sizes=sizes,
                             execution="shared_base" if at_download else "auto")
    assert _trains_at_download(sim) == at_download
    hp = sim.hparams({"client_lr": LR, **({"alpha": 0.7} if seed % 2 else {})})
    state = sim.init(jax.random.PRNGKey(0), hp)
    rule = fedasync_rule(0.7, 0.5) if seed % 2 else fedbuff_rule(k, 1.0)
    state, metrics = jax.jit(sim.run_rounds, static_argnums=3)(state, sim.data, hp, 25)
    applied = int(np.sum(metrics["participants"]))
    log, models = event_simulation(rule, _flat(sim.init(jax.random.PRNGKey(0), hp).server.params), trace, xs, ys,
                                   until=applied + n)
    assert applied >= 10
    assert _events(metrics) == [(i, s) for _, i, _, s, _ in log[:applied]]
    np.testing.assert_allclose(_flat(state.server.params), models.after_event[applied], rtol=1e-11, atol=1e-13)
    times = np.asarray(metrics["sim_time_s"])
    assert set(times.tolist()) <= {t for t, *_ in log}


def test_windows_equal_one_tick_at_a_time_with_bounded_concurrency_markov_availability_and_jitter(x64):
    """The same ticks, metrics and final state whether the ticks run one call each (one tick a
    window) or 40 in one chunk of windows of up to 64 arrivals."""
    n = 10
    data, _, _ = make_data([5] * n, seed=33)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    system = SystemModel(profiles=ej.system.tiered_profiles(n, seed=1), jitter=True,
                         availability=ej.Availability("markov", mean_on=4, mean_off=2))
    fedbuff = ej.FedBuff(buffer_size=3, concurrency=4, log_events=True, staleness_bins=3)
    for algorithm, execution in ((fedbuff, "per_node"), (fedbuff, "shared_base"),
                                 (ej.FedAsync(concurrency=6, lag_tolerance=5, log_events=True), "auto"),
                                 (ej.ADPSGD(ej.Topology("ring"), concurrency=5, log_events=True), "auto")):
        sim = ej.Simulation(model, data, algorithm, ej.LocalTraining(batch_size=2, epochs=1, execution=execution),
                            clients_per_round=2, system=system)
        hp = sim.hparams({"client_lr": 0.2})
        state0 = sim.init(jax.random.PRNGKey(4), hp)
        chunk, metrics = jax.jit(sim.run_rounds, static_argnums=3)(state0, sim.data, hp, 40)
        step, state, rows = jax.jit(sim.round), state0, []
        for _ in range(40):
            state, m = step(state, sim.data, hp)
            rows.append(m)
        for name in metrics:
            np.testing.assert_allclose(np.asarray(metrics[name]), np.stack([np.asarray(r[name]) for r in rows]),
                                       rtol=1e-13, atol=1e-15, err_msg=f"{algorithm.name} {name}")
        for a, b in zip(jax.tree_util.tree_leaves(_meaning(chunk)), jax.tree_util.tree_leaves(_meaning(state))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-15)
        assert np.sum(metrics["participants"]) >= 30


def _meaning(state):
    """The state without the scratch of updates trained at download: the window's model store
    is numbered within the window, so the queued downloads are compared by the model each
    took, and the buffer by its filled rows."""
    server = state.server.extra
    if not hasattr(getattr(server, "starts", None), "queue"):
        return state
    pending, count, filled = server.starts, int(server.starts.queue.count), int(server.rule.count)
    taken = jax.tree_util.tree_map(lambda m: m[np.asarray(pending.queue.model)[:count]], pending.models)
    queue = pending.queue._replace(slot=pending.queue.slot[:count], node=pending.queue.node[:count],
                                   job=pending.queue.job[:count], model=())
    rows = jax.tree_util.tree_map(lambda r: r[:filled], server.rule.rows)
    extra = server._replace(starts=pending._replace(models=taken, queue=queue), rule=server.rule._replace(rows=rows))
    return state._replace(server=state.server._replace(extra=extra))


def test_bounded_concurrency_keeps_that_many_nodes_in_flight_and_samples_every_node():
    n, c = 12, 3
    trace = np.random.default_rng(5).uniform(1.0, 9.0, size=(n, 7))   # distinct: no ties
    sim, _, _ = _trace_sim(ej.FedAsync(concurrency=c, log_events=True), trace, cohort=1, sizes=[4] * n)
    hp = sim.hparams({"client_lr": LR})
    state = sim.init(jax.random.PRNGKey(0), hp)
    step, seen = jax.jit(sim.round), set()
    for _ in range(150):
        state, metrics = step(state, sim.data, hp)
        assert int(np.sum(np.isfinite(np.asarray(state.system.events.finish)))) == c
        seen |= {i for i, _ in _events(metrics)}
        assert float(metrics["staleness_max"]) < 3 * c
    assert seen == set(range(n))   # idle nodes are drawn into freed slots


def test_fedbuff_staleness_exponent_is_traced_and_logged_with_downloads(x64):
    trace = np.array([[1.0, 3.0], [2.0, 1.0], [3.0, 2.0], [1.5, 2.5], [2.5, 1.5], [4.0, 1.0]])
    sim, xs, ys = _trace_sim(ej.FedBuff(buffer_size=2, log_events=True), trace)
    hp = sim.hparams({"client_lr": LR, "staleness_exponent": 1.0})
    state = sim.init(jax.random.PRNGKey(0), hp)
    x0 = _flat(state.server.params)
    state, metrics = jax.jit(sim.run_rounds, static_argnums=3)(state, sim.data, hp, 30)
    applied = int(np.sum(metrics["participants"]))
    log, models = event_simulation(fedbuff_rule(2, 1.0, exponent=1.0), x0, trace, xs, ys, until=applied + 6)
    np.testing.assert_allclose(_flat(state.server.params), models.after_event[applied], rtol=1e-11, atol=1e-13)
    got = [(int(d), float(w)) for d_row, w_row in zip(np.asarray(metrics["event_download"]),
                                                       np.asarray(metrics["event_weight"]))
           for d, w in zip(d_row, w_row) if d >= 0]
    assert got == [(v, (1.0 + s) ** -1.0) for _, _, v, s, _ in log[:applied]]


def test_memory_holds_one_snapshot_per_in_flight_slot_not_a_version_history():
    sim, _, _ = _trace_sim(ej.FedBuff(buffer_size=3, concurrency=4), np.ones((6, 1)) * np.arange(1, 7)[:, None],
                           execution="per_node")
    state = sim.init(jax.random.PRNGKey(0), sim.hparams({}))
    assert state.server.extra.starts.models["out"]["w"].shape[0] == 4
    assert state.server.extra.rule.rows["out"]["w"].shape[0] == 3


def test_updates_trained_at_download_are_kept_as_factors_per_slot():
    """FedBuff with a factor form: every in-flight slot holds its update as factors (rows x
    (d_in + d_out), not d_in x d_out; a sample-space first layer only its rows x d_out
    gradients, its inputs being the node's own samples), the buffer K of them with the
    samples, and only the models one window's flushes produce are kept; the first downloads
    are queued at time 0."""
    sim, _, _ = _trace_sim(ej.FedBuff(buffer_size=3, concurrency=4, window=8),
                           np.ones((6, 1)) * np.arange(1, 7)[:, None], execution="shared_base")
    state = sim.init(jax.random.PRNGKey(0), sim.hparams({}))
    pending, d_in, d_out = state.server.extra.starts, *state.server.params["out"]["w"].shape
    rows = max(SIZES)   # a first layer's rows are the node's samples (M = 6 <= S*B = 12 rows visited)
    assert pending.factors["out"].a is None and pending.factors["out"].g.shape == (4, rows, d_out)
    assert state.server.extra.rule.rows["out"].a.shape == (3, rows, d_in)
    assert jax.tree_util.tree_leaves(pending.models)[0].shape[0] == (8 + 3 - 1) // 3 + 1
    assert int(pending.queue.count) == 4
    assert sorted(np.asarray(pending.queue.node).tolist()) == sorted(np.asarray(state.system.events.slot_node).tolist())


@pytest.mark.parametrize("rule", ["fedasync", "fedbuff", "fedbuff_at_download"])
def test_bytes_down_count_every_download(x64, rule):
    """Every arrival restarts its node (all in flight, always online, distinct finish times), so
    each tick downloads as many models as it receives, whatever the window."""
    trace = np.random.default_rng(7).uniform(1.0, 9.0, size=(6, 5))
    algorithm = ej.FedAsync() if rule == "fedasync" else ej.FedBuff(buffer_size=2)
    sim, _, _ = _trace_sim(algorithm, trace, execution=AT_DOWNLOAD.get(rule, "auto"))
    hp = sim.hparams({"client_lr": LR})
    _, metrics = jax.jit(sim.run_rounds, static_argnums=3)(sim.init(jax.random.PRNGKey(0), hp), sim.data, hp, 30)
    assert np.all(np.asarray(metrics["bytes_up"]) > 0)
    np.testing.assert_array_equal(np.asarray(metrics["bytes_down"]), np.asarray(metrics["bytes_up"]))


def test_asynchronous_options_are_checked_before_compute():
    data, _, _ = make_data([4] * 5, seed=1)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    for bad, match in ((lambda: ej.FedBuff(concurrency=0), "concurrency"), (lambda: ej.FedAsync(window=0), "window"),
                       (lambda: ej.FedAsync(staleness_offset=-2), "staleness_offset"),
                       (lambda: ej.ADPSGD(concurrency=-1), "concurrency"),
                       (lambda: SystemModel(durations=np.array([[1.0, -2.0]])), r"durations\[0, 1\] = -2.0"),
                       (lambda: SystemModel(durations=np.ones(5)), r"\[N, J\]")):
        with pytest.raises(ValueError, match=match):
            bad()
    with pytest.raises(ValueError, match="concurrency=9 must be in"):
        ej.Simulation(model, data, ej.FedBuff(concurrency=9), ej.LocalTraining(batch_size=2))
    with pytest.raises(ValueError, match="durations trace describes 4 nodes but N=5"):
        ej.Simulation(model, data, ej.FedBuff(), ej.LocalTraining(batch_size=2),
                      system=SystemModel(durations=np.ones((4, 2))))
    sim = ej.Simulation(model, data, ej.FedBuff(), ej.LocalTraining(batch_size=2))
    with pytest.raises(ValueError, match="asynchronous"):
        sim.plan(sim.init(jax.random.PRNGKey(0), sim.hparams({})), sim.hparams({}))


@pytest.mark.parametrize("algorithm", [ej.FedAsync(concurrency=5), ej.FedBuff(buffer_size=3), ej.ADPSGD(ej.Topology("ring"))],
                         ids=lambda a: a.name)
def test_factor_form_from_own_starts_equals_per_node_training(x64, algorithm):
    """shared_base's per-node factor form (each arrival from its own downloaded model, no
    per-node weight written per step) gives per_node's models: an MLP, momentum-free SGD,
    FedAsync's proximal pull included."""
    data, _, _ = make_data([6, 5, 7, 6, 4, 6, 5, 6], dim=6, seed=34)
    model = ej.models.mlp(data.feature_shape, data.num_classes, hidden=(7,))
    system = SystemModel(durations=np.random.default_rng(2).uniform(1, 3, size=(8, 4)))
    runs = {}
    for execution in ("per_node", "shared_base"):
        sim = ej.Simulation(model, data, algorithm, ej.LocalTraining(batch_size=2, steps=3, execution=execution),
                            clients_per_round=2, system=system)
        assert sim.execution == execution
        hp = sim.hparams({"client_lr": 0.3, **({"mu": 0.5} if algorithm.name.startswith("fedasync") else {})})
        state, metrics = jax.jit(sim.run_rounds, static_argnums=3)(sim.init(jax.random.PRNGKey(1), hp), sim.data, hp, 30)
        runs[execution] = (state, metrics)
    (a, ma), (b, mb) = runs["per_node"], runs["shared_base"]
    for x, y in zip(jax.tree_util.tree_leaves((a.server.params, a.nodes.params)),
                    jax.tree_util.tree_leaves((b.server.params, b.nodes.params))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(ma["train_loss"], mb["train_loss"], rtol=1e-11)
    assert np.sum(ma["participants"]) >= 30


def test_values_an_asynchronous_run_would_accept_silently_are_refused_or_said():
    data, _, _ = make_data([4] * 5, seed=1)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    sim = ej.Simulation(model, data, ej.FedAsync(), ej.LocalTraining(batch_size=2))
    with pytest.raises(ValueError, match=r"alpha=5 .*\(0, 1\]"):
        sim.hparams({"alpha": 5.0})
    feddyn = ej.Simulation(model, data, ej.FedDyn(), ej.LocalTraining(batch_size=2))
    assert float(feddyn.hparams({"alpha": 5.0})["alpha"]) == 5.0     # FedDyn's alpha is not a mixing weight
    with pytest.warns(UserWarning, match=r"buffer_size=50\) with at most 5 nodes in flight"):
        ej.Simulation(model, data, ej.FedBuff(buffer_size=50), ej.LocalTraining(batch_size=2))


def test_a_run_whose_nodes_all_go_offline_says_where_training_stopped():
    data, _, _ = make_data([4] * 5, seed=1)
    model = ej.models.logistic_regression(data.feature_shape, data.num_classes)
    sim = ej.Simulation(model, data, ej.FedBuff(buffer_size=2), ej.LocalTraining(batch_size=2), clients_per_round=1,
                        system=SystemModel(availability=ej.Availability("bernoulli"),
                                           profiles=_profiles([1.0, 1.3, 0.7, 2.1, 1.7])))
    with pytest.warns(RuntimeWarning, match=r"no node took part after round 5 of 20"):
        results = sim.run(20, eval_every=10, hparams={"dropout": 1.0})
    assert results.rounds["participants"][:5].tolist() == [1.0] * 5   # the first jobs started at t = 0


def test_a_sweep_of_fedbuff_trained_at_download_equals_its_runs(x64):
    """Points of a vmapped sweep (traced client_lr and staleness_exponent, seeds) give the final
    evaluation of their own runs: the queue, the factor buffer and the flush loop under vmap."""
    trace = np.random.default_rng(8).uniform(1.0, 9.0, size=(6, 3))
    sim, _, _ = _trace_sim(ej.FedBuff(buffer_size=2, concurrency=4), trace, execution="shared_base")
    assert _trains_at_download(sim)
    points = {"client_lr": [0.1, 0.3], "staleness_exponent": [0.5, 1.0]}
    res = sim.sweep(20, points, seeds=[0, 1], eval_every=20, strategy="vmap")
    final = res.evals["test_loss"][:, -1]
    assert len(set(final.tolist())) == 4
    for r, (p, seed) in enumerate(res.runs):
        run = sim.run(20, seed=seed, hparams={k: v[p] for k, v in points.items()}, eval_every=20)
        np.testing.assert_allclose(float(final[r]), run.evaluations()["test_loss"].iloc[-1], rtol=1e-12)


@pytest.mark.parametrize("rule", ["fedasync", "fedbuff", "fedbuff_at_download"])
def test_run_donates_its_state_and_keeps_the_numbers(rule):
    """``Simulation.run`` gives every chunk (the initial evaluation included) the state to update
    in place: the initial state shares no buffer between leaves (a donated call refuses that),
    and the run ends where an undonated ``run_rounds`` of the same rounds does, bit for bit."""
    trace = np.random.default_rng(3).uniform(1.0, 9.0, size=(6, 5))
    algorithm = ej.FedAsync() if rule == "fedasync" else ej.FedBuff(buffer_size=2)
    sim, _, _ = _trace_sim(algorithm, trace, execution=AT_DOWNLOAD.get(rule, "auto"))
    hp = sim.hparams({"client_lr": LR})
    state = sim.init(jax.random.PRNGKey(5), hp)
    buffers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree_util.tree_leaves(state)]
    assert len(set(buffers)) == len(buffers)
    expected, _ = jax.jit(sim.run_rounds, static_argnums=3)(state, sim.data, hp, 20)
    result = sim.run(20, seed=5, hparams={"client_lr": LR}, eval_every=10)
    for got, want in zip(jax.tree_util.tree_leaves(result.final_state), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
