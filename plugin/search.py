"""The query facade: text -> text.onnx -> Qdrant prefilter on `global` -> folded rerank -> fused top k.

    from qdrant_client import QdrantClient
    from hark.plugin import AudioSearch

    search = AudioSearch(QdrantClient(path=".hark/qdrant"), ".hark/models/<version>", collection="audio")
    for hit in search.search("a dog barks while rain falls", limit=5):
        print(hit.score, hit.payload["source_uri"], hit.offset)

Works with any QdrantClient (embedded folder or server URL). Torch-free.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hark.bundle import Bundle
from hark.errors import HarkError
from hark.moments import MomentSpec, best_span, dequantize, event_times, order_agreement
from hark.order import ordered_events
from hark.store import vectors_of
from hark.store.candidates import Candidates, pack_rows

from .encoders import Reranker, TextBatch, TextEncoder

MAX_LIMIT = 1000
MAX_CANDIDATES = 5000  # also the deepest page: limit + offset
DEFAULT_CANDIDATES = 200
# Candidates a query that states an order re-scores with their moments (the best by the fused score).
ORDER_POOL = 50


class QueryError(HarkError):
    """A query that cannot be answered as asked (empty text, limits out of range, bad filter)."""


@dataclass
class Hit:
    id: int | str  # the point id as Qdrant stores it (integer ids stay integers)
    score: float  # the fused score (manifest weights over the parts below)
    cosine: float
    rerank: float | None
    payload: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # source URI of the recording
    offset: float | None = None  # window start in seconds, for windows of long recordings
    # Where in the recording the query matches best ({"start": s, "end": s}, seconds from the recording's
    # start), when the model stores moments (hark.moments)
    moment: dict[str, float] | None = None
    # For a query that states an order: how well its events' times in this hit follow that order, in [-1, 1]
    # (hark.moments.order_agreement); the score includes the manifest's order weight times it.
    order: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StageTimes:
    """Seconds per stage of one query (or batch). With a shared encoder call (`encode=`), `text_encoder` is the
    time this call spent waiting for and in that call."""

    tokenize: float = 0.0
    text_encoder: float = 0.0
    prefilter: float = 0.0
    rerank: float = 0.0
    fuse: float = 0.0
    moments: float = 0.0

    def as_ms(self) -> dict[str, float]:
        return {k: round(v * 1000, 3) for k, v in asdict(self).items()}


@dataclass
class SearchResult:
    """What one call returns: the hits of each query and the timings of this call only."""

    hits: list[list[Hit]]
    times: StageTimes
    # The physical collection the hits were read from (the alias's target when the call began): a caller that
    # reads more of the hits' points reads them there.
    collection: str


# An encoder override: (text encoder, texts) -> (the batch, seconds spent tokenizing). The service passes a
# micro-batcher here so concurrent requests share one encoder call.
Encode = Callable[[TextEncoder, list[str]], tuple[TextBatch, float]]


# Model versions whose sessions stay loaded: the live one, the one before it (a rollback) and one more.
MAX_ENGINES = 3


def _call(fn: Callable[[], Any]) -> Any:
    return fn()


def parse_filter(flt: Any):
    """None, a qdrant `models.Filter`, or its JSON form (dict or string) -> `models.Filter`."""
    if flt is None:  # before the imports: an unfiltered query on the embedded store never loads qdrant_client
        return None
    from pydantic import ValidationError
    from qdrant_client import models

    if isinstance(flt, models.Filter):
        return flt
    if isinstance(flt, str):
        import json

        try:
            flt = json.loads(flt)
        except json.JSONDecodeError as exc:
            raise QueryError(f"filter is not valid JSON: {exc.msg}") from exc
    if not isinstance(flt, dict):
        raise QueryError("filter must be a JSON object (Qdrant filter syntax)")
    try:
        return models.Filter.model_validate(flt)
    except ValidationError as exc:
        first = exc.errors()[0]
        # Drop pydantic's union/list bookkeeping from the location: keep the user's field path.
        where = ".".join(str(p) for p in first.get("loc", ()) if "[" not in str(p)) or "filter"
        raise QueryError(f"malformed filter at '{where}': {first.get('msg')}") from exc


class AudioSearch:
    """Language-based audio search over a hark collection."""

    def __init__(self, client, bundle: Bundle | str | Path, collection: str = "audio", device: str = "auto",
                 candidates: int = DEFAULT_CANDIDATES, text_precision: str | None = None,
                 registry=None) -> None:
        """`registry` (hark Settings): follow the alias to whatever version is live, loading that version's
        bundle from the registry, so a re-index switch never pairs one model's queries with another's vectors."""
        self.client = client
        self.device, self.text_precision = device, text_precision
        self.collection = collection
        self.candidates = candidates
        self.registry = registry
        # Versions' sessions, most recently used last; at most MAX_ENGINES (each holds a text tower's weights).
        self._engines: OrderedDict[str, tuple[Bundle, TextEncoder, Reranker | None]] = OrderedDict()
        self._engines_lock = threading.Lock()  # loading a version's sessions once, whichever thread asks first
        self._local = threading.local()  # per-thread timings of the last call (the `last_times` accessor)
        self._use(bundle if isinstance(bundle, Bundle) else Bundle.load(bundle))

    @property
    def last_times(self) -> StageTimes:
        """Timings of the last `search`/`search_batch` made by the calling thread (use `query` for the timings
        of a given call; concurrent threads never see each other's)."""
        return getattr(self._local, "times", None) or StageTimes()

    def _engine(self, bundle: Bundle) -> tuple[Bundle, TextEncoder, Reranker | None]:
        with self._engines_lock:
            if bundle.version not in self._engines:
                reranker = Reranker(bundle, self.device) if bundle.has_rerank else None
                self._engines[bundle.version] = (bundle, TextEncoder(bundle, self.device, self.text_precision),
                                                 reranker)
                # Every re-index switch would otherwise keep one more set of sessions for the life of the
                # process; a query still using a dropped one holds its own reference until it ends.
                while len(self._engines) > MAX_ENGINES:
                    self._engines.popitem(last=False)
            self._engines.move_to_end(bundle.version)
            return self._engines[bundle.version]

    def _cached_engine(self, version: str) -> tuple[Bundle, TextEncoder, Reranker | None] | None:
        with self._engines_lock:
            return self._engines.get(version)

    def _use(self, bundle: Bundle) -> tuple[Bundle, TextEncoder, Reranker | None]:
        engine = self._engine(bundle)
        # The attributes name the engine used last (documented API); each call works on its own tuple.
        self.bundle, self.text, self.reranker = engine
        self.fusion = self.bundle.fusion
        return engine

    def _follow_alias(self, collection: str, store_call: Callable[[Callable[[], Any]], Any] | None = None,
                      ) -> tuple[tuple[Bundle, TextEncoder, Reranker | None], str]:
        """The engine of the version `collection` serves now, and the physical collection that version lives in.

        The alias is read once per query and every later read (prefilter, rerank rows, moments, vectors) goes to
        that physical collection: a re-index that switches the alias mid-query cannot pair this model's query
        with the next model's vectors. A versioned collection named directly (`NAME__<version>`) gets its own
        version's engine too, when that version is registered.
        """
        current = self._engine(self.bundle)
        if self.registry is None:
            return current, collection
        from hark.registry import registered_folder
        from hark.store import resolve_collection, version_of

        physical = (store_call or _call)(lambda: resolve_collection(self.client, collection))
        version = version_of(physical)
        if not version or version == current[0].version:
            return current, physical
        cached = self._cached_engine(version)
        if cached:
            return self._use(cached[0]), physical
        # Only the registry's folders: a collection's name never chooses a path to read.
        folder = registered_folder(self.registry, version)
        if folder is None:
            if physical == collection:  # a plain collection whose name happens to hold "__"
                return current, physical
            raise QueryError(f"collection '{collection}' serves model version {version!r}, which is not registered "
                             f"in {self.registry.models_dir}")
        return self._use(Bundle.load(folder, state_dir=getattr(self.registry, "state_dir", None))), physical

    def engine_for(self, collection: str | None = None, store_call: Callable[[Callable[[], Any]], Any] | None = None,
                   ) -> tuple[Bundle, TextEncoder, Reranker | None]:
        """(bundle, text encoder, reranker) of the version `collection` (default: this search's) serves now."""
        return self._follow_alias(collection or self.collection, store_call)[0]

    # -- public API ----------------------------------------------------------------------------------
    def search(self, text: str, limit: int = 10, filter: Any = None, candidates: int | None = None,
               rerank: bool = True, group_by_source: bool = False, collection: str | None = None,
               order: bool = True) -> list[Hit]:
        """The `limit` best clips for one text query. `order=False` leaves out the order term (a query that
        states an order is then ranked by content alone)."""
        return self.search_batch([text], limit, filter, candidates, rerank, group_by_source, collection, order)[0]

    def search_batch(self, texts: Sequence[str], limit: int = 10, filter: Any = None, candidates: int | None = None,
                     rerank: bool = True, group_by_source: bool = False,
                     collection: str | None = None, order: bool = True) -> list[list[Hit]]:
        """Several queries, batched end to end (one encoder call, one Qdrant round trip, one rerank call)."""
        result = self.query(texts, limit, filter, candidates, rerank, group_by_source, collection, order=order)
        self._local.times = result.times
        return result.hits

    def query(self, texts: Sequence[str], limit: int = 10, filter: Any = None, candidates: int | None = None,
              rerank: bool = True, group_by_source: bool = False, collection: str | None = None, offset: int = 0,
              encode: Encode | None = None, store_call: Callable[[Callable[[], Any]], Any] | None = None,
              order: bool = True) -> SearchResult:
        """`search_batch` with this call's own timings, paging (`offset`), and hooks for a server: `encode`
        replaces the encoder call (micro-batching), `store_call(fn)` runs the Qdrant call (a lock, say)."""
        from hark.store import query_candidates

        texts = self._check(texts, limit, candidates, offset)
        (bundle, text_encoder, reranker), physical = self._follow_alias(collection or self.collection, store_call)
        # Captions that state an order are checked against the hits' moments: their events are encoded in the
        # same encoder call as the queries.
        order_weight = bundle.fusion.get("order", 0.0) if order and bundle.moments is not None else 0.0
        events = [ordered_events(t) if order_weight else None for t in texts]
        extra = [e for ev in events if ev for e in ev]
        n = len(texts)
        # Pages of one size cut one fixed ranking: the prefilter's order in blocks of `block` candidates, each block
        # fused (and re-scored for order) on its own. A pool that grew with the offset re-ranked the windows of
        # earlier pages among the new ones, so paging repeated some hits and never showed others. A block is at
        # least a page, so a page at a multiple of its size lies in one block and its scores fall throughout.
        block = max(candidates or self.candidates, limit)
        end = limit + offset
        k = min(-(-end // block) * block, max(MAX_CANDIDATES, end))
        flt = parse_filter(filter)
        use_rerank = rerank and reranker is not None
        times = StageTimes()
        start = time.perf_counter()
        if encode is None:
            ids, mask = text_encoder.tokenizer.encode(texts + extra)
            times.tokenize = time.perf_counter() - start
            start = time.perf_counter()
            sentence, tokens = text_encoder.session.run(None, {"input_ids": ids, "attention_mask": mask})
            times.text_encoder = time.perf_counter() - start
        else:
            batch, times.tokenize = encode(text_encoder, texts + extra)
            sentence, tokens, mask = batch.sentence, batch.tokens, batch.mask
            times.text_encoder = max(0.0, time.perf_counter() - start - times.tokenize)
        event_vectors, at = [], n
        for ev in events:
            event_vectors.append(sentence[at:at + len(ev)] if ev else None)
            at += len(ev) if ev else 0
        sentence, tokens, mask = sentence[:n], tokens[:n], mask[:n]

        def prefilter():
            # The candidates come back as arrays (hark.store.candidates): no per-point models, and the `tokens`
            # rows already packed for the reranker.
            return query_candidates(self.client, physical, sentence, "global", k, flt,
                                    rows="tokens" if use_rerank else None)

        while True:
            start = time.perf_counter()
            found = store_call(prefilter) if store_call is not None else prefilter()
            times.prefilter += time.perf_counter() - start
            rerank_scores: list[np.ndarray | None] = [None] * len(texts)
            if use_rerank:
                start = time.perf_counter()
                rerank_scores = reranker.score_packed(tokens, mask, [(c.rows, c.counts) for c in found])
                times.rerank += time.perf_counter() - start
            start = time.perf_counter()
            plans = [self._plan(bundle.fusion, c, att, block, end, group_by_source, bool(ev))
                     for c, att, ev in zip(found, rerank_scores, events, strict=True)]
            times.fuse += time.perf_counter() - start
            # Grouped, K windows may hold fewer recordings than the page needs (a few long recordings fill a
            # block): read further blocks while the store has more, or a page would end early and the next be empty.
            wider = min(2 * k, max(MAX_CANDIDATES, end))
            if not group_by_source or wider <= k or not any(
                    len(c.ids) == k and len(_flatten(plan, True)) < end for c, plan in zip(found, plans, strict=True)):
                break
            k = wider
        if bundle.moments is None:
            results = [_flatten(plan, group_by_source)[offset:end] for plan in plans]
            return SearchResult(results, times, physical)
        start = time.perf_counter()
        stored = self._moment_rows(physical, [[h for pool, _ in plan for h in pool] for plan in plans], store_call)
        results = []
        for plan, ev in zip(plans, event_vectors, strict=True):
            for pool, _ in plan:
                if pool:
                    self._order(pool, stored, ev, bundle.moments, order_weight)
            results.append(_flatten(plan, group_by_source)[offset:end])
        unread = [[h for h in hits if h.id not in stored] for hits in results]
        if any(unread):
            stored |= self._moment_rows(physical, unread, store_call)
        self._add_spans(bundle, sentence, results, stored)
        times.moments = time.perf_counter() - start
        return SearchResult(results, times, physical)

    def _moment_rows(self, collection: str, ranked: list[list[Hit]],
                     store_call: Callable[[Callable[[], Any]], Any] | None) -> dict[Any, np.ndarray]:
        """The stored sub-window rows of the given hits, as unit rows (one store read; hits stored without
        moments are absent)."""
        ids = list(dict.fromkeys(hit.id for hits in ranked for hit in hits))
        if not ids:
            return {}

        def read():
            return vectors_of(self.client, collection, ids, "moments")

        stored = {}
        for pid, vector in (store_call(read) if store_call is not None else read()).items():
            if len(vector):  # rows of Python floats, packed in one C call per row
                stored[pid] = dequantize(pack_rows(vector) if isinstance(vector, list) else vector)
        return stored

    @classmethod
    def _plan(cls, fusion: dict[str, float], candidates: Candidates, att: np.ndarray | None, block: int, end: int,
              group_by_source: bool, order: bool) -> list[tuple[list[Hit], list[Hit]]]:
        """The blocks a page up to `end` reads, best first. Each block is `block` candidates in prefilter order,
        fused and sorted on its own; grouped, it leaves out recordings an earlier block holds. Per block: (the
        windows an order query re-scores, the rest); with no order, everything is the rest."""
        hits = cls._fuse(fusion, candidates, att, len(candidates.ids), False, ranked=False)
        plan: list[tuple[list[Hit], list[Hit]]] = []
        seen: set[str] = set()
        count = 0
        for first in range(0, len(hits), block):
            part = sorted(hits[first:first + block], key=lambda h: h.score, reverse=True)
            if group_by_source:
                part = [h for h in part if _recording(h) not in seen]
                new = {_recording(h) for h in part}
                seen |= new
                count += len(new)
            else:
                count += len(part)
            plan.append(cls._order_pool(part, group_by_source) if order else ([], part))
            if count >= end:
                break
        return plan

    @staticmethod
    def _order_pool(hits: list[Hit], group_by_source: bool) -> tuple[list[Hit], list[Hit]]:
        """Sorted hits split into the pool an order query re-scores and the rest: the best ORDER_POOL windows, or
        with `group_by_source` every window of the best ORDER_POOL recordings (a few long recordings' windows would
        otherwise fill the pool and leave fewer than `limit` recordings once grouped)."""
        if not group_by_source:
            return hits[:ORDER_POOL], hits[ORDER_POOL:]
        pool, rest, recordings = [], [], set()
        for hit in hits:
            key = _recording(hit)
            if key not in recordings and len(recordings) < ORDER_POOL:
                recordings.add(key)
            (pool if key in recordings else rest).append(hit)
        return pool, rest

    @staticmethod
    def _order(hits: list[Hit], stored: dict[Any, np.ndarray], events: np.ndarray, spec: MomentSpec,
               weight: float) -> None:
        """Add weight x order agreement to each hit with moments and re-sort the hits in place."""
        for hit in hits:
            rows = stored.get(hit.id)
            if rows is not None:
                hit.order = order_agreement(event_times(rows, events, spec), spec)
                hit.score += weight * hit.order
        hits.sort(key=lambda h: h.score, reverse=True)

    @staticmethod
    def _add_spans(bundle: Bundle, sentence: np.ndarray, results: list[list[Hit]],
                   stored: dict[Any, np.ndarray]) -> None:
        """Each hit's best span: its stored sub-window rows against its query's sentence vector."""
        for query, hits in enumerate(results):
            for hit in hits:
                rows = stored.get(hit.id)
                if rows is None:
                    continue
                payload = hit.payload
                duration = (payload.get("window_duration") or payload.get("duration")
                            or bundle.manifest.audio.window_seconds)
                begin, end = best_span(rows @ sentence[query], bundle.moments, float(duration))
                at = float(payload.get("window_offset") or 0.0)
                hit.moment = {"start": round(at + begin, 3), "end": round(at + end, 3)}

    async def asearch(self, text: str, **kwargs: Any) -> list[Hit]:
        """`search` without blocking the event loop (runs in the default executor)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: self.search(text, **kwargs))

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Sentence vectors for the cosine prefilter (what Qdrant's inference protocol asks hark for)."""
        return self.text.encode(list(texts)).sentence

    # -- internals -----------------------------------------------------------------------------------
    @staticmethod
    def _check(texts: Sequence[str], limit: int, candidates: int | None, offset: int = 0) -> list[str]:
        if isinstance(texts, str):
            raise QueryError("search_batch takes a list of texts")
        cleaned = [t.strip() if isinstance(t, str) else t for t in texts]
        if not cleaned or any(not isinstance(t, str) or not t for t in cleaned):
            raise QueryError("query text must be a non-empty string")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise QueryError(f"limit must be between 1 and {MAX_LIMIT}")
        if candidates is not None and (not isinstance(candidates, int) or not 1 <= candidates <= MAX_CANDIDATES):
            raise QueryError(f"candidates must be between 1 and {MAX_CANDIDATES}")
        if not isinstance(offset, int) or offset < 0 or limit + offset > MAX_CANDIDATES:
            raise QueryError(f"offset must be a non-negative integer with limit + offset at most {MAX_CANDIDATES}")
        return cleaned

    @staticmethod
    def _fuse(fusion: dict[str, float], candidates: Candidates, att: np.ndarray | None, limit: int,
              group_by_source: bool, ranked: bool = True) -> list[Hit]:
        """Each candidate's hit with its fused score: sorted, grouped and cut to `limit`, or with `ranked` False
        in the prefilter's order."""
        w_cos, w_att = fusion.get("cosine", 1.0), fusion.get("attention", 0.0)
        hits = []
        for i, (pid, cosine, payload) in enumerate(zip(candidates.ids, candidates.scores.tolist(),
                                                       candidates.payloads, strict=True)):
            part = None if att is None or np.isnan(att[i]) else float(att[i])
            # No rerank asked: the bi-encoder's cosine alone (fitted weights may give it no weight of its own). A
            # candidate without clip rows among reranked ones stands in its cosine for the attention score, so that
            # it stays on the fused scale (its cosine alone is half of it with weights 1 and 1).
            fused = cosine if att is None else w_cos * cosine + w_att * (cosine if part is None else part)
            windows = payload.get("windows", 1)
            hits.append(Hit(id=pid, score=fused, cosine=cosine, rerank=part, payload=payload,
                            source=payload.get("source_uri"),
                            offset=payload.get("window_offset") if windows and windows > 1 else None))
        if not ranked:
            return hits
        hits.sort(key=lambda h: h.score, reverse=True)
        return _group(hits, group_by_source)[:limit]


def _flatten(plan: list[tuple[list[Hit], list[Hit]]], group_by_source: bool) -> list[Hit]:
    """The ranking a plan's blocks make: each block's re-scored pool, then its rest (grouped when asked)."""
    return [hit for pool, rest in plan for hit in _group(pool, group_by_source) + _group(rest, group_by_source)]


def _group(hits: list[Hit], group_by_source: bool) -> list[Hit]:
    """Sorted hits, keeping only the best window of each recording when asked."""
    if not group_by_source:
        return hits
    best: dict[str, Hit] = {}
    for hit in hits:
        best.setdefault(_recording(hit), hit)  # hits are sorted: the first window seen is the best
    return list(best.values())


def _recording(hit: Hit) -> str:
    return hit.payload.get("content_hash") or hit.source or str(hit.id)
