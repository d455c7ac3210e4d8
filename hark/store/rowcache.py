"""A bounded cache of candidates' rerank rows, decoded, for the embedded engine.

Why: qdrant-edge-py returns stored vectors as Python lists and holds the GIL while it searches and while those
lists are built. For one prefilter at K=200 on 10k report-size clips (warm page cache, 2 cores) the engine's search
took 2.7 ms, building the candidates' `tokens` rows as lists about 10 ms and packing them into float32 another
3.5 ms: most of a query's GIL-held time, which is what caps concurrent queries in one `hark serve` process. A row
that was decoded once is kept as a read-only float32 array, so a repeated candidate costs a dictionary lookup.

Coherent because the embedded folder has one owner process (`EdgeStore` holds its lock) and every write goes
through `EdgeStore`, which calls `invalidate` under its own lock before the write is visible. A read that began
before a write may still finish after it: it carries the collection's `generation` from its engine call and
`put` drops its rows when a write came in between. Not used for a Qdrant server, which other clients write to.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

# Bytes an entry costs beyond its data: the array's header, the key tuple with its UUID, the LRU node (measured
# about 270 + the key's UUID for a point with rows).
ENTRY_OVERHEAD = 320


class RowCache:
    """Least-recently-used arrays keyed by (collection, vector name, point id), within `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("the row cache's size cannot be negative")
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str, Hashable], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._generations: dict[str, int] = {}
        self._names: set[str] = set()  # vector names ever cached (one or two): an id's keys without a scan
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def generation(self, collection: str) -> int:
        """Read before the engine call whose rows may be `put`; changes with every write to the collection."""
        with self._lock:
            return self._generations.get(collection, 0)

    def get(self, collection: str, name: str, ids: Sequence[Hashable]) -> list[np.ndarray | None]:
        """The cached rows of each id ([count, width], read-only), None where not cached."""
        out: list[np.ndarray | None] = []
        with self._lock:
            for pid in ids:
                key = (collection, name, pid)
                rows = self._entries.get(key)
                if rows is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                else:
                    self.misses += 1
                out.append(rows)
        return out

    def put(self, collection: str, name: str, items: Iterable[tuple[Hashable, np.ndarray]], generation: int) -> bool:
        """Keep rows read at `generation`; nothing is kept when the collection was written to since. An array
        larger than the whole cache is never kept."""
        if not self.enabled:
            return False
        with self._lock:
            if self._generations.get(collection, 0) != generation:
                return False
            for pid, rows in items:
                size = rows.nbytes + ENTRY_OVERHEAD
                if size > self.max_bytes:
                    continue
                rows.flags.writeable = False
                key = (collection, name, pid)
                self._names.add(name)
                old = self._entries.pop(key, None)
                if old is not None:
                    self._bytes -= old.nbytes + ENTRY_OVERHEAD
                self._entries[key] = rows
                self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes + ENTRY_OVERHEAD
        return True

    def invalidate(self, collection: str, ids: Iterable[Hashable] | None = None) -> None:
        """Before a write: forget the ids' rows (every row of the collection when `ids` is None) and move the
        collection to a new generation, so that reads already under way cannot put back what they saw."""
        with self._lock:
            self._generations[collection] = self._generations.get(collection, 0) + 1
            if ids is None:
                keys = [key for key in self._entries if key[0] == collection]
            else:
                keys = [(collection, name, pid) for pid in set(ids) for name in self._names]
            for key in keys:
                rows = self._entries.pop(key, None)
                if rows is not None:
                    self._bytes -= rows.nbytes + ENTRY_OVERHEAD

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "bytes": self._bytes, "max_bytes": self.max_bytes,
                "hits": self.hits, "misses": self.misses}
