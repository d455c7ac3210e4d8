"""The base of user-facing errors: the CLI prints them as one line instead of a traceback."""

import json
from typing import Any


class HarkError(Exception):
    """Something the user can fix (a path, a file, a setting); the message says what."""


class SourcedError(HarkError):
    """An error about one named source (a file, a URI): `source` names it, `reason` says why in plain words."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self):
        # Rebuild from both fields: worker processes and task queues ship exceptions by pickling.
        return (type(self), (self.source, self.reason))


def json_excerpt(data: Any, limit: int = 60) -> str:
    """A JSON value as text, cut to `limit` characters, to show what a file held in an error message."""
    text = json.dumps(data)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."
