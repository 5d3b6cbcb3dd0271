"""The one exception type for failures a user can fix."""

__all__ = ["AlexfeatError"]


class AlexfeatError(Exception):
    """An expected failure: the message says what is wrong and what to do.

    The CLI prints it as one line on stderr and exits with code 2.
    """
