"""Qdrant filter JSON / `models.Filter` -> the embedded engine's (qdrant-edge) filter objects.

The engine has no constructor from JSON, so every condition kind is mapped here by hand. A condition this module
does not know is an error naming it (`UnsupportedFilterError`): dropping it would silently widen a search.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from hark.store.errors import StoreError

# The longest pydantic message passed on to a user (the full one lists every union member it tried).
_MAX_MESSAGE = 300


class UnsupportedFilterError(StoreError):
    """A filter (or one of its conditions) the embedded engine cannot run; a 4xx for HTTP callers."""


class InvalidFilterError(UnsupportedFilterError):
    """A filter that is not valid Qdrant filter JSON."""


def parse(flt: Any):
    """A `models.Filter` (or None) from a `models.Filter`, its JSON dict, or None."""
    from pydantic import ValidationError
    from qdrant_client.http import models

    if flt is None or isinstance(flt, models.Filter):
        return flt
    if isinstance(flt, dict):
        try:
            return models.Filter.model_validate(flt)
        except ValidationError as exc:
            raise InvalidFilterError(f"invalid filter: {_short(exc)}") from exc
    raise UnsupportedFilterError(f"a filter must be a Qdrant filter object or its JSON, not {type(flt).__name__}")


def to_edge(flt: Any):
    """The engine's `Filter` for a Qdrant filter (object or JSON dict); None for no filter."""
    if flt is None:  # before `parse`, which imports qdrant_client: an unfiltered query never needs it
        return None
    parsed = parse(flt)
    return None if parsed is None else _filter(parsed)


def edge_point_id(pid: Any) -> int | uuid.UUID:
    """Qdrant point ids are unsigned ints or UUIDs; strings must be UUIDs (as on a server)."""
    if isinstance(pid, bool):
        raise StoreError(f"invalid point id {pid!r}: use an unsigned integer or a UUID")
    if isinstance(pid, int):
        if pid < 0:
            raise StoreError(f"invalid point id {pid}: integer ids must be unsigned")
        return pid
    if isinstance(pid, uuid.UUID):
        return pid
    if isinstance(pid, str):
        try:
            return uuid.UUID(pid)
        except ValueError:
            raise StoreError(f"invalid point id {pid!r}: use an unsigned integer or a UUID") from None
    raise StoreError(f"invalid point id {pid!r} ({type(pid).__name__})")


def _short(exc: Any) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc)[:_MAX_MESSAGE]
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    text = f"{loc}: {first.get('msg')}" if loc else str(first.get("msg"))
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more)"
    return text[:_MAX_MESSAGE]


def _conditions(value: Any) -> list:
    # Qdrant accepts a single condition where a list is expected.
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _filter(flt):
    import qdrant_edge as qe

    must = [_condition(c) for c in _conditions(flt.must)]
    should = [_condition(c) for c in _conditions(flt.should)]
    must_not = [_condition(c) for c in _conditions(flt.must_not)]
    min_should = None
    if flt.min_should is not None:
        min_should = qe.MinShould([_condition(c) for c in _conditions(flt.min_should.conditions)],
                                  flt.min_should.min_count)
    return qe.Filter(must=must or None, should=should or None, must_not=must_not or None, min_should=min_should)


def _condition(cond: Any):
    import qdrant_edge as qe
    from qdrant_client.http import models

    if isinstance(cond, models.Filter):
        return _filter(cond)
    if isinstance(cond, models.FieldCondition):
        return _field(cond)
    if isinstance(cond, models.IsEmptyCondition):
        return qe.IsEmptyCondition(cond.is_empty.key)
    if isinstance(cond, models.IsNullCondition):
        return qe.IsNullCondition(cond.is_null.key)
    if isinstance(cond, models.HasIdCondition):
        return qe.HasIdCondition({edge_point_id(p) for p in cond.has_id})
    if isinstance(cond, models.HasVectorCondition):
        return qe.HasVectorCondition(cond.has_vector)
    if isinstance(cond, models.NestedCondition):
        return qe.NestedCondition(cond.nested.key, _filter(cond.nested.filter))
    if isinstance(cond, models.SliceCondition):
        return qe.SliceCondition(total=cond.slice.total, index=cond.slice.index)
    raise UnsupportedFilterError(f"filter condition {type(cond).__name__} ({_describe(cond)}) is not supported by "
                                 "the embedded store")


def _field(cond):
    import qdrant_edge as qe

    kwargs: dict[str, Any] = {}
    if cond.match is not None:
        kwargs["match"] = _match(cond.key, cond.match)
    if cond.range is not None:
        kwargs["range"] = _range(cond.range)
    if cond.values_count is not None:
        vc = cond.values_count
        kwargs["values_count"] = qe.ValuesCount(lt=vc.lt, gt=vc.gt, lte=vc.lte, gte=vc.gte)
    if cond.geo_bounding_box is not None:
        box = cond.geo_bounding_box
        kwargs["geo_bounding_box"] = qe.GeoBoundingBox(_geo(box.top_left), _geo(box.bottom_right))
    if cond.geo_radius is not None:
        kwargs["geo_radius"] = qe.GeoRadius(_geo(cond.geo_radius.center), cond.geo_radius.radius)
    if cond.geo_polygon is not None:
        poly = cond.geo_polygon
        interiors = [[_geo(p) for p in ring.points] for ring in poly.interiors] if poly.interiors else None
        kwargs["geo_polygon"] = qe.GeoPolygon([_geo(p) for p in poly.exterior.points], interiors)
    if cond.is_empty is not None:
        kwargs["is_empty"] = cond.is_empty
    if cond.is_null is not None:
        kwargs["is_null"] = cond.is_null
    if not kwargs:
        # A server rejects this too; matching everything instead would widen the search.
        raise InvalidFilterError(f"invalid filter: the condition on '{cond.key}' has no match, range, values_count, "
                                 "geo, is_empty or is_null")
    return qe.FieldCondition(key=cond.key, **kwargs)


def _match(key: str, match):
    import qdrant_edge as qe
    from qdrant_client.http import models

    if isinstance(match, models.MatchValue):
        value = match.value
        if isinstance(value, bool):
            # The bindings (0.9.0) read a Python bool as the integer 0/1, which then matches no bool payload;
            # numpy's bool reaches the engine as a bool.
            import numpy as np

            value = np.bool_(value)
        return qe.MatchValue(value)
    if isinstance(match, models.MatchAny):
        return qe.MatchAny(list(match.any))
    if isinstance(match, models.MatchExcept):
        return qe.MatchExcept(list(match.except_))
    if isinstance(match, models.MatchText):
        return qe.MatchText(match.text)
    if isinstance(match, models.MatchTextAny):
        return qe.MatchTextAny(match.text_any)
    if isinstance(match, models.MatchPhrase):
        return qe.MatchPhrase(match.phrase)
    if isinstance(match, models.MatchPrefix):
        return qe.MatchPrefix(match.prefix)
    if isinstance(match, models.MatchSubstring):
        return qe.MatchSubstring(match.substring)
    raise UnsupportedFilterError(f"match {type(match).__name__} on '{key}' is not supported by the embedded store")


def _range(rng):
    import qdrant_edge as qe
    from qdrant_client.http import models

    if isinstance(rng, models.DatetimeRange):
        return qe.RangeDateTime(gte=_iso(rng.gte), gt=_iso(rng.gt), lte=_iso(rng.lte), lt=_iso(rng.lt))
    return qe.RangeFloat(gte=rng.gte, gt=rng.gt, lte=rng.lte, lt=rng.lt)


def _iso(value: dt.datetime | dt.date | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        # Qdrant reads a datetime without a zone as UTC.
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


def _geo(point):
    import qdrant_edge as qe

    return qe.GeoPoint(lon=point.lon, lat=point.lat)


def _describe(cond: Any) -> str:
    text = repr(cond)
    return text if len(text) <= 120 else text[:117] + "..."
