"""A readers-writer guard for the embedded store: reads run together, a write runs alone.

qdrant-client's local mode reads (query, retrieve, scroll, count) only read its arrays and dicts, so
concurrent reads are safe and a query's store call need not wait for another's; writes mutate them and
must not overlap a read. A server needs no guard (it takes concurrent requests itself)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteGuard:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    @property
    def writing(self) -> bool:
        return self._writing
