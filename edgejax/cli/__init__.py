"""Command-line interface: ``edgejax run`` (see ``edgejax.cli.main``)."""
from edgejax.cli.main import main
from edgejax.cli.run import DEFAULTS, resolve_options

__all__ = ["DEFAULTS", "main", "resolve_options"]
