"""Micro-batching: concurrent requests share one text-encoder call.

Requests hand their texts to the encoder threads. One takes the first waiting request, then collects more for
up to `wait_ms`, at most `max_batch` texts, but only while other queries are in flight (a lone query never
waits), and encodes each bundle's texts in one call. Each request gets back its own rows. The encoder's
cost per query falls with batch size (see benchmarks/serve.py and the settings' comments), so under load
this buys throughput for a wait of a few milliseconds.

Two encoder threads (`ENCODER_THREADS`), so a second call can start while one runs: with one, 4 concurrent
clients left the 2 cores idle 22% of the time (an encoder call's parallel sections wait for their slowest
thread, and the queries between calls are mostly one-core Python), and a second call in flight filled that:
35.4 -> 38.8-39.7 requests/s at 4 clients, the lone query unchanged (benchmarks/README.md, serve).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass, field

import numpy as np

from ..encoders import TextBatch, TextEncoder

ENCODER_THREADS = 2
# A waiting request checks this often that encoder threads are alive: a `close` that raced it may have stopped them
# after it queued its texts.
STRANDED_CHECK_S = 1.0


@dataclass
class _Job:
    encoder: TextEncoder
    texts: list[str]
    future: Future = field(default_factory=Future)


class TextBatcher:
    def __init__(self, wait_ms: float, max_batch: int | None = None, threads: int = ENCODER_THREADS) -> None:
        """`max_batch` None (or 0): each encoder's own `preferred_batch` (32 on CUDA, 8 on the CPU)."""
        self.wait = max(0.0, wait_ms) / 1000
        self.max_batch = max(1, max_batch) if max_batch else None
        self.threads = max(1, threads)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._started = 0  # encoder threads ever started (their names)
        self._start_lock = threading.Lock()
        self._active = 0  # queries inside the query path now: more than the batch holds means more may come
        self._active_lock = threading.Lock()
        self.calls = 0  # encoder calls made (tests and metrics read it)
        self.texts = 0  # texts those calls encoded: texts / calls is the mean batch

    # -- the query path ------------------------------------------------------------------------------
    def enter(self) -> None:
        with self._active_lock:
            self._active += 1

    def leave(self) -> None:
        with self._active_lock:
            self._active -= 1

    def encode(self, encoder: TextEncoder, texts: list[str]) -> tuple[TextBatch, float]:
        """This request's rows of a shared encoder call, and the seconds that call spent tokenizing."""
        if self.wait == 0 or self.max_batch == 1:
            return self._run(encoder, texts)
        self._ensure_thread()
        job = _Job(encoder, list(texts))
        self._queue.put(job)
        # Waits with `wait`, not `result(timeout=)`: that raises TimeoutError both when time is up and when the
        # encoder call itself failed with one, which looped here forever.
        while not wait([job.future], timeout=STRANDED_CHECK_S).done:
            self._ensure_thread()
        return job.future.result()

    def close(self) -> None:
        with self._start_lock:
            workers, self._workers = self._workers, []
        for _ in workers:
            self._queue.put(None)  # each worker takes one and stops
        for worker in workers:
            worker.join(timeout=5)

    # -- the encoder threads -------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        with self._start_lock:
            self._workers = [w for w in self._workers if w.is_alive()]
            while len(self._workers) < self.threads:
                self._started += 1
                worker = threading.Thread(target=self._loop, name=f"hark-text-batcher-{self._started}", daemon=True)
                worker.start()
                self._workers.append(worker)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            count = len(first.texts)
            cap = self.max_batch or first.encoder.preferred_batch
            deadline = time.perf_counter() + self.wait
            while count < cap:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.perf_counter()
                    with self._active_lock:
                        others = self._active > len(jobs)
                    if remaining <= 0 or not others:
                        break
                    try:
                        job = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if job is None:
                    self._queue.put(None)  # stop after this batch
                    break
                jobs.append(job)
                count += len(job.texts)
            self._encode_jobs(jobs)

    def _encode_jobs(self, jobs: list[_Job]) -> None:
        groups: dict[int, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(id(job.encoder), []).append(job)
        for group in groups.values():
            try:
                batch, tokenize = self._run(group[0].encoder, [t for job in group for t in job.texts])
            except BaseException as exc:  # the callers raise it, each in its own request
                for job in group:
                    job.future.set_exception(exc)
                continue
            row = 0
            for job in group:
                n = len(job.texts)
                part = TextBatch(batch.sentence[row:row + n], batch.tokens[row:row + n], batch.mask[row:row + n])
                job.future.set_result((part, tokenize))
                row += n

    def _run(self, encoder: TextEncoder, texts: list[str]) -> tuple[TextBatch, float]:
        start = time.perf_counter()
        ids, mask = encoder.tokenizer.encode(texts)
        tokenize = time.perf_counter() - start
        sentence, tokens = encoder.session.run(None, {"input_ids": ids, "attention_mask": mask})
        with self._active_lock:
            self.calls += 1
            self.texts += len(texts)
        return TextBatch(np.asarray(sentence, dtype=np.float32), np.asarray(tokens, dtype=np.float32), mask), tokenize
