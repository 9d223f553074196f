"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class TexforceError(Exception):
    """A user-facing error: bad input, missing weights, unusable output folder. Its message is one line."""
