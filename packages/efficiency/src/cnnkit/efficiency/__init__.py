"""cnnkit.efficiency (see the package README)."""

from cnnkit.efficiency.version import __version__

__all__ = ["__version__"]
