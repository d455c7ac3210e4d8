"""The query side: the `AudioSearch` facade, the ONNX encoders and reranker, and `hark serve`."""

from hark.plugin.search import AudioSearch, Hit

__all__ = ["AudioSearch", "Hit"]
