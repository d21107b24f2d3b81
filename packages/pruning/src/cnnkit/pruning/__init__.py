"""cnnkit.pruning (see the package README)."""

from cnnkit.pruning.version import __version__

__all__ = ["__version__"]
