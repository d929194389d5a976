"""The command line's compilation cache: on unless ``EDGEJAX_COMPILATION_CACHE=0``
(``edgejax.core.compile_cache`` says where programs are stored)."""
from __future__ import annotations

import os
from pathlib import Path

from edgejax.core.compile_cache import cache_dir

__all__ = ["cache_dir", "enable_compilation_cache"]


def enable_compilation_cache() -> Path | None:
    """Switch the cache on (unless disabled); returns its folder, or ``None`` when off."""
    if os.environ.get("EDGEJAX_COMPILATION_CACHE", "1").strip().lower() in ("0", "false", "off", "no"):
        return None
    from edgejax.core.compile_cache import enable_compilation_cache as enable

    return enable()
