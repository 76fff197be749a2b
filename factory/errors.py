"""The one exception type a user sees: its message says what is wrong and what to do."""


class FactoryError(Exception):
    """A problem with the user's input or environment, reported as one line without traceback."""
