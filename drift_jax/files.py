"""Atomic writes: a file goes to a temp file in its folder, fsync, then rename; a whole result
folder goes to a temp sibling that replaces the target in one step (`atomic_folder`). No pickle
anywhere."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from drift_jax import faults


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from others
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _to_json(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) or hasattr(obj, "__array__"):
        return np.asarray(obj).tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """``indent=None``: one line, for records too large to read by eye (benchmark runs)."""
    text = json.dumps(obj, indent=indent, sort_keys=False, default=_to_json) + "\n"
    return atomic_write_bytes(path, text.encode())


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    import io  # stdlib

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_save_figure(path: str | os.PathLike, fig) -> Path:
    import io  # stdlib

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yields a fresh temporary sibling of ``path`` to write a whole result into. When the block
    succeeds it replaces ``path`` in one step (an atomic exchange where the OS has one); when it
    fails (an exception, a full disk, Ctrl-C) the temporary folder and any parent folders made
    for it are removed and ``path`` is left exactly as it was."""
    path = Path(path).absolute()
    made = [p for p in reversed(path.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        faults.point("files.folder_written")
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(made):
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


_RENAME_EXCHANGE = 2


@functools.cache
def _renameat2():
    """libc's renameat2 (Linux, glibc >= 2.28), or None."""
    return getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), "renameat2", None)


def _swap_in(new: Path, path: Path) -> None:
    """Moves the folder ``new`` to ``path``; an existing ``path`` is exchanged atomically
    (Linux renameat2) or, where that is missing, renamed aside first, and then removed."""
    if not path.exists():
        os.rename(new, path)
        return
    exchange, at_cwd = _renameat2(), -100
    if exchange is not None and exchange(at_cwd, os.fsencode(new), at_cwd, os.fsencode(path),
                                         _RENAME_EXCHANGE) == 0:
        shutil.rmtree(new, ignore_errors=True)  # now holds the old result
        return
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
    os.rename(path, old / "x")
    os.rename(new, path)
    shutil.rmtree(old, ignore_errors=True)
