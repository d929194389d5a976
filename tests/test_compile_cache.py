"""The persistent compilation cache from the Python API (``edgejax.enable_compilation_cache``)."""
import json
import os
import subprocess
import sys

import jax

import edgejax

RUN = """
import json, sys
import jax
import edgejax as ej
hits = []
jax.monitoring.register_event_listener(lambda e, **_: hits.append(e) if e.endswith("cache_hits") else None)
jax.numpy.zeros(3).block_until_ready()   # a program compiled before the cache is switched on
folder = ej.enable_compilation_cache(*sys.argv[1:])
data, _ = ej.federate(ej.data.load_digits(), 6, ej.data.IID(), seed=0)
sim = ej.Simulation(ej.models.logistic_regression(data.feature_shape, data.num_classes), data, ej.FedAvg(),
                    ej.LocalTraining(batch_size=10, steps=2), clients_per_round=2)
res = sim.run(3, seed=0, eval_every=3)
print(json.dumps({"folder": str(folder), "hits": len(hits), "loss": res.rounds["train_loss"].tolist()}))
"""


def _run(env, *args):
    done = subprocess.run([sys.executable, "-c", RUN, *args], env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_every_program_from_the_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "EDGEJAX_"))}
    first = _run(env, str(tmp_path / "c"))
    stored = len(list((tmp_path / "c").iterdir()))
    second = _run(env, str(tmp_path / "c"))
    assert first["folder"] == str(tmp_path / "c") and first["hits"] == 0 and stored >= 2
    assert second["hits"] >= 2 and second["loss"] == first["loss"]   # the small programs are stored too
    assert len(list((tmp_path / "c").iterdir())) == stored


def test_the_folder_the_user_gave_jax_is_kept(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "EDGEJAX_"))}
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "mine")
    env["EDGEJAX_CACHE_DIR"] = str(tmp_path / "edgejax")
    assert _run(env)["folder"] == str(tmp_path / "mine") and any((tmp_path / "mine").iterdir())
    assert not (tmp_path / "edgejax").exists()


def test_enable_sets_the_folder_and_stores_small_programs(tmp_path):
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    try:
        assert edgejax.enable_compilation_cache(tmp_path) == tmp_path
        assert jax.config.jax_compilation_cache_dir == str(tmp_path)
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()
