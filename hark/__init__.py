"""hark: language-based audio search served from Qdrant."""

__version__ = "0.1.0"
