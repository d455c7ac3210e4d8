"""The store layer's errors, apart so that the engines can import them without importing the layer."""

from __future__ import annotations

from hark.errors import HarkError


class StoreUnavailableError(HarkError):
    """Qdrant cannot be reached (server down, or the embedded folder is held by another process).

    Transient: workers retry these with backoff.
    """


class StoreError(HarkError):
    """A request the store cannot carry out as asked (unknown collection, unsupported filter, ...)."""
