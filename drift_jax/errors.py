"""One exception type for every mistake a user can fix: the message names the problem and the fix."""


class DriftJaxError(ValueError):
    """Bad input, config or file. The CLI prints it as one line and exits with status 2."""
