"""The wheel: ``pip wheel . --no-deps`` builds one that installs into a fresh venv, imports
from there (not from this checkout) and provides the ``edgejax`` command."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_imports(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr  # pip fetches setuptools>=77 for the isolated build
    wheel, = (tmp_path / "dist").glob("edgejax-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # the dependencies (jax, optax, ...) come from this environment, so nothing big is downloaded; a
    # path added by a .pth file does not run that folder's own .pth files (this checkout's editable install)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, env=clean)
    assert install.returncode == 0, install.stdout + install.stderr

    code = "import edgejax, edgejax.sweep, edgejax.cli; print(edgejax.__file__, edgejax.__version__)"
    imported = subprocess.run([python, "-c", code], capture_output=True, text=True, env=clean, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    where, version = imported.stdout.split()
    assert Path(where).is_relative_to(env_dir) and version == "0.1.0", imported.stdout
    command = subprocess.run([env_dir / "bin" / "edgejax", "run", "--help"], capture_output=True, text=True, env=clean)
    assert command.returncode == 0 and "--checkpoint-every" in command.stdout, command.stderr
