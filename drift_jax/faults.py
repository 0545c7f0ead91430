"""Named points where tests inject a fault, so that crash safety is tested at a known moment
instead of at a fraction of wall time.

``DRIFT_JAX_FAULT=<point>`` (points are named ``module.event``) kills the process when it
reaches that point (SIGKILL, as a power cut or the OOM killer would);
``DRIFT_JAX_FAULT=<point>:raise`` raises ``OSError(ENOSPC)`` there instead (a full disk), and
``DRIFT_JAX_FAULT=<point>:term`` sends the process SIGTERM (a scheduler's stop). Unset, a point
costs one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal

FAULT_ENV = "DRIFT_JAX_FAULT"


def point(name: str) -> None:
    """A place where a fault may be injected (module docstring)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    where, _, action = spec.partition(":")
    if where != name:
        return
    if action == "raise":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {name})")
    if action == "term":
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next line Python runs
        return
    os.kill(os.getpid(), signal.SIGKILL)
