"""The base of user-facing errors: the CLI prints them as one line instead of a traceback."""


class HarkError(Exception):
    """Something the user can fix (a path, a file, a setting); the message says what."""
