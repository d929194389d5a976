"""jax's persistent compilation cache for edgejax's programs (opt-in from Python, on in the CLI).

``enable_compilation_cache()`` stores every compiled program on disk, so that a later
process running the same programs loads them instead of compiling them again.  It keeps
a cache folder the user already gave jax (``JAX_COMPILATION_CACHE_DIR`` or
``jax.config.update("jax_compilation_cache_dir", ...)``) and otherwise uses
``$EDGEJAX_CACHE_DIR`` (default ``$XDG_CACHE_HOME/edgejax/jax``, i.e. ``~/.cache/edgejax/jax``).
jax's default stores only programs that took a second or more to compile; here every
program is stored (the small ones add up), unless the user changed that minimum.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MIN_COMPILE_TIME_S = 1.0   # jax's default jax_persistent_cache_min_compile_time_secs


def cache_dir() -> Path:
    """edgejax's own cache folder (when the user gave jax none)."""
    if os.environ.get("EDGEJAX_CACHE_DIR"):
        return Path(os.environ["EDGEJAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgejax" / "jax"


def enable_compilation_cache(folder: str | Path | None = None) -> Path:
    """Store compiled programs in ``folder`` (default: the user's jax cache folder, else
    ``cache_dir()``) from now on in this process; returns the folder."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    configured = jax.config.jax_compilation_cache_dir
    folder = Path(folder) if folder is not None else Path(configured) if configured else cache_dir()
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if jax.config.jax_persistent_cache_min_compile_time_secs == DEFAULT_MIN_COMPILE_TIME_S:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()   # effective even when this process has compiled before
    return folder
