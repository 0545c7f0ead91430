"""One exception type for every mistake a user can fix: its message names problem and fix."""


class DriftJaxError(ValueError):
    """Bad input, config or file. The CLI prints it as one line and exits with status 2."""


class DriftJaxWarning(UserWarning):
    """Something a user should know before a run spends its time. The CLI prints it as one
    line ``drift-jax: warning: ...``."""
