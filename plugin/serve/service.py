"""The object behind the routes: settings, the store client, the search facade (once a bundle is loaded),
the text micro-batcher, metrics, keys and media roots."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from hark.bundle import Bundle
from hark.errors import HarkError
from hark.settings import Settings

from ..search import AudioSearch, QueryError, SearchResult, StageTimes
from .auth import Keys
from .batcher import TextBatcher
from .errors import ApiError, NotReadyError, store_error
from .guard import ReadWriteGuard
from .media import MediaRoots

log = logging.getLogger(__name__)

MODEL_PREFIX = "hark"
RELOAD_SECONDS = 1.0  # an unready service looks for a registered bundle at most this often
T = TypeVar("T")


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.stage = Histogram("hark_query_stage_seconds", "Query latency per stage", ["stage"],
                               registry=self.registry,
                               buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.candidates = Histogram("hark_query_candidates", "Candidates reranked per query", registry=self.registry,
                                    buckets=(10, 50, 100, 200, 500, 1000, 2000, 5000))
        self.requests = Counter("hark_requests_total", "Requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.errors = Counter("hark_errors_total", "Errors by kind", ["kind"], registry=self.registry)

    def watch_row_cache(self, cache) -> None:
        """Gauges read from the embedded store's row cache (`hark.store.rowcache`) at each scrape."""
        from prometheus_client import Gauge

        for key, doc in (("hits", "Candidates whose rerank rows came from the row cache"),
                         ("misses", "Candidates whose rerank rows were read from the engine"),
                         ("bytes", "Bytes of decoded rerank rows held by the row cache")):
            Gauge(f"hark_row_cache_{key}", doc, registry=self.registry).set_function(
                lambda key=key: cache.stats()[key])

    def observe(self, times: StageTimes, candidates: int, queries: int = 1) -> None:
        for stage, seconds in times.__dict__.items():
            self.stage.labels(stage).observe(seconds)
        for _ in range(queries):
            self.candidates.observe(candidates)


class Service:
    """Holds what the routes share. Queries run in parallel: only the embedded store's calls are serialised
    (`store`), and the text encoder is shared through the batcher."""

    def __init__(self, settings: Settings, bundle: Bundle | str | None = None, client=None) -> None:
        from hark.store import connect

        self.settings = settings
        self.client = client if client is not None else connect(settings)
        # Only the embedded store's calls are guarded (reads together, writes alone: guard.py), never the rest
        # of a query; a server takes concurrent requests itself.
        self.guard = ReadWriteGuard() if settings.embedded_qdrant else None
        self.keys = Keys(settings.api_key, settings.read_only_api_key)
        self.metrics = Metrics()
        if getattr(self.client, "row_cache", None) is not None:
            self.metrics.watch_row_cache(self.client.row_cache)
        self.media = MediaRoots(settings)
        self.batcher = TextBatcher(settings.query_batch_wait_ms, settings.query_batch_max)
        self.upstream = None
        if settings.qdrant_url:
            import httpx

            self.upstream = httpx.AsyncClient(base_url=settings.qdrant_url.rstrip("/"), timeout=60)
        prewarm = getattr(self.client, "prewarm", None)  # the embedded engine: its on-disk rows into the page cache
        if prewarm is not None:
            prewarm(settings.collection)
        self._bundle_ref = bundle
        self._search: AudioSearch | None = None
        self._load_lock = threading.Lock()
        self._last_try = 0.0
        self.not_ready = "no bundle loaded yet"
        self._try_load(force=True)

    # -- readiness -----------------------------------------------------------------------------------
    def _try_load(self, force: bool = False) -> None:
        """Load the bundle if it is not loaded: the given one, else HARK_BUNDLE, else the newest registered.
        Never waits: a load in progress elsewhere (or a recent failed try) is left alone."""
        if self._search is not None or (not force and time.monotonic() - self._last_try < RELOAD_SECONDS):
            return
        if not self._load_lock.acquire(blocking=False):
            return
        try:
            if self._search is not None:
                return
            self._last_try = time.monotonic()
            from hark.registry import resolve_bundle

            ref = self._bundle_ref
            bundle = ref if isinstance(ref, Bundle) else Bundle.load(resolve_bundle(self.settings, ref),
                                                                         state_dir=self.settings.state_dir)
            self._search = AudioSearch(self.client, bundle, self.settings.collection, self.settings.device,
                                       registry=self.settings)
            self.not_ready = ""
            log.info("hark serve: bundle %s loaded", bundle.version)
        except (HarkError, OSError, ValueError) as exc:
            self.not_ready = f"no usable bundle: {exc}"
        finally:
            self._load_lock.release()

    @property
    def ready(self) -> bool:
        self._try_load()
        return self._search is not None

    @property
    def search(self) -> AudioSearch:
        """The facade; NotReadyError (503) until a bundle is loaded."""
        self._try_load()
        if self._search is None:
            raise NotReadyError(self.not_ready)
        return self._search

    @property
    def bundle(self) -> Bundle:
        """The bundle loaded last (no store call: the probes and messages read it). Queries and /infer follow the
        collection's alias to the version it serves (`AudioSearch.engine_for`)."""
        return self.search.bundle

    # -- store calls ---------------------------------------------------------------------------------
    def store_lock(self, write: bool = False) -> contextlib.AbstractContextManager:
        """The embedded store's guard for one call (nothing with a server)."""
        if self.guard is None:
            return contextlib.nullcontext()
        return self.guard.write() if write else self.guard.read()

    def store(self, fn: Callable[[], T], write: bool = False) -> T:
        """Run one store call (under the embedded engine's guard) with its errors mapped to HTTP errors."""
        try:
            with self.store_lock(write):
                return fn()
        except LookupError as exc:
            if isinstance(exc, KeyError):
                raise ApiError(400, f"Bad request: {exc}") from exc
            raise ApiError(404, f"Not found: {exc}") from exc  # the embedded engine's missing collection/point
        except (ApiError, HarkError):
            raise
        except Exception as exc:
            mapped = store_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    def physical(self, name: str) -> str:
        from hark.store import resolve_collection

        return self.store(lambda: resolve_collection(self.client, name))

    def collection_exists(self, name: str) -> bool:
        physical = self.physical(name)
        return self.store(lambda: self.client.collection_exists(physical))

    # -- models --------------------------------------------------------------------------------------
    def model_names(self) -> dict[str, str]:
        """Model names this service answers for, and what each returns."""
        bundle = self.bundle
        names = {}
        for ref in (MODEL_PREFIX, f"{MODEL_PREFIX}/{bundle.name}", f"{MODEL_PREFIX}/{bundle.version}"):
            names[ref] = "global"
            names[f"{ref}/text-tokens"] = "text-tokens"
        return names

    def check_model(self, model: Any) -> str:
        kind = self.model_names().get(model) if isinstance(model, str) else None
        if kind is None:
            raise QueryError(f"unknown model {model!r}; this hark serves {MODEL_PREFIX}/{self.bundle.name} "
                             f"(version {self.bundle.version})")
        return kind

    # -- queries -------------------------------------------------------------------------------------
    def run_search(self, texts: list[str], **kwargs: Any) -> SearchResult:
        """Queries through the facade, in parallel with other requests; the timings are this call's."""
        search = self.search
        self.batcher.enter()
        try:
            result = search.query(texts, encode=self.batcher.encode, store_call=self.store, **kwargs)
        finally:
            self.batcher.leave()
        self.metrics.observe(result.times, kwargs.get("candidates") or search.candidates, len(texts))
        return result

    def close(self) -> None:
        self.batcher.close()
