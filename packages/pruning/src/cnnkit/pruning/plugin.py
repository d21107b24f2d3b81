"""cnnkit-pruning's plugin: the table of contents of this distribution.

It imports only ``cnnkit.core`` and adds specs; implementations are named by target strings and imported
on first use. The methods of this package arrive in their own issues; until then it registers nothing.
"""

from __future__ import annotations
