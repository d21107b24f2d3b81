"""cnnkit.regularizers (see the package README)."""

from cnnkit.regularizers.version import __version__

__all__ = ["__version__"]
