"""JAX's persistent compilation cache for the command line, on by default.

Compiled programs are stored in ``$EDGEJAX_CACHE_DIR`` (default
``$XDG_CACHE_HOME/edgejax/jax``, i.e. ``~/.cache/edgejax/jax``), so a repeated run skips
compilation, including the many tiny programs of eager host-side ``jnp`` calls (the
minimum compile time for an entry is 0).  ``EDGEJAX_COMPILATION_CACHE=0`` switches it
off; a ``JAX_COMPILATION_CACHE_DIR`` set by the user is left as it is.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where the CLI keeps compiled programs."""
    if os.environ.get("EDGEJAX_CACHE_DIR"):
        return Path(os.environ["EDGEJAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgejax" / "jax"


def enable_compilation_cache() -> Path | None:
    """Switch the cache on (unless disabled); returns its folder, or ``None`` when off."""
    if os.environ.get("EDGEJAX_COMPILATION_CACHE", "1").strip().lower() in ("0", "false", "off", "no"):
        return None
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    folder = cache_dir()
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
