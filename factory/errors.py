"""The one exception type a user sees: its message says what is wrong and what to do."""


class FactoryError(Exception):
    """A problem with the user's input or environment, reported as one line without traceback."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's (often multi-line) error message, for a one-line report."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """A FactoryError's own message; for anything else its type and first line (for a report)."""
    return first_line(exc) if isinstance(exc, FactoryError) else f"{type(exc).__name__}: {first_line(exc)}"
