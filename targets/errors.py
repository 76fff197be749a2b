"""The one exception type a user sees: its message says what is wrong and what to do.

It lives in the lowest layer (targets/) so both the deployment side and the training side
(factory/) raise the same type; the CLI turns it into one line and exit code 2.
"""


class FactoryError(Exception):
    """A problem with the user's input or environment, reported as one line without traceback."""


def one_line(exc: BaseException) -> str:
    """A FactoryError's own message; for anything else its type and the first line of its message
    (library errors are often many lines long)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, FactoryError):
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
