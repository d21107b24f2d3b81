"""cnnkit.bench: discovers every installed cnnkit method and evaluates them uniformly (CLI ``cnnkit``)."""

from cnnkit.bench.version import __version__

__all__ = ["__version__"]
