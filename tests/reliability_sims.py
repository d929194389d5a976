"""Small simulations for the kill-and-resume tests, built the same way in a subprocess and in
the test process.  ``python tests/reliability_sims.py OUT`` compiles every one, then runs them
all at once in threads (into ``OUT/<name>``, with checkpoints) so that one process can be
killed while each is mid-way."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import edgejax as ej

CONFIGS = ("fedavg", "scaffold", "gossip", "markov")
ROUNDS, EVAL_EVERY, CHECKPOINT_EVERY = 40, 2, 8


def build(name: str) -> ej.Simulation:
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_data

    data, _, _ = make_data([5, 6, 7, 8, 9, 4], dtype="float32")
    model = ej.models.logistic_regression((5,), 3)
    local = ej.LocalTraining(batch_size=2, steps=2)
    if name == "fedavg":
        return ej.Simulation(model, data, ej.FedAvg(), local, clients_per_round=3)
    if name == "scaffold":
        return ej.Simulation(model, data, ej.SCAFFOLD(), local, clients_per_round=3)
    if name == "gossip":
        return ej.Simulation(model, data, ej.DPSGD(ej.Topology("ring")), local)
    if name == "markov":
        system = ej.SystemModel(availability=ej.Availability("markov", mean_on=3, mean_off=2))
        return ej.Simulation(model, data, ej.FedAvg(), local, clients_per_round=3, system=system)
    raise ValueError(name)


def run(sim: ej.Simulation, out, **options):
    return sim.run(ROUNDS, eval_every=EVAL_EVERY, out_dir=out, **options)


def run_all(out: Path):
    built = {name: build(name) for name in CONFIGS}
    for sim in built.values():
        sim.run(EVAL_EVERY, eval_every=EVAL_EVERY)  # compiles the same chunk program
    threads = [threading.Thread(target=run, args=(sim, out / name), kwargs={"checkpoint_every": CHECKPOINT_EVERY})
               for name, sim in built.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    run_all(Path(sys.argv[1]))
