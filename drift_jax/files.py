"""Atomic writes: a file goes to a temp file in its folder, fsync, then rename; a whole result
folder goes to a temp sibling that replaces the target in one step (`atomic_folder`). No pickle
anywhere."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from drift_jax import faults
from drift_jax.errors import DriftJaxError
from drift_jax.validate import is_finished


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


class RunExists(DriftJaxError):
    """The target of a swap holds a finished run that this writer was not asked to replace."""

    def __init__(self, path: Path):
        super().__init__(f"--out {path} now holds a finished run, written by another command "
                         "while this one ran; it was left as it is and this run was not saved: "
                         "choose another --out, or pass --overwrite to replace it.")
        self.path = path


TEMPORARY = ".tmp-"  # atomic_folder's temporary siblings: .<name>.tmp-<random>
SET_ASIDE = ".old-"  # a replaced folder on its way out, where the OS has no exchange


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False):
    """Yields a fresh temporary sibling of ``path`` to write a whole result into. When the block
    succeeds it replaces ``path`` in one step (an atomic exchange where the OS has one); when it
    fails (an exception, a full disk, Ctrl-C, SIGTERM) the temporary folder and any parent
    folders made for it are removed and ``path`` is left exactly as it was.

    Unless ``overwrite``, a finished run at ``path`` is never replaced, checked again at the
    swap itself (`RunExists`): another command may have finished there since this one began.
    Operating-system errors name ``path``, not the temporary folder the user never chose."""
    path = Path(path).absolute()
    made = [p for p in reversed(path.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}{TEMPORARY}"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        faults.point("files.folder_written")
        _swap_in(tmp, path, overwrite)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(made):
            with contextlib.suppress(OSError):
                parent.rmdir()
        _name_the_target(e, tmp, path)
        raise


def _name_the_target(error: BaseException, tmp: Path, path: Path) -> None:
    """An OSError about a file inside the temporary folder is reported at its place in
    ``path``, where the user will look."""
    if not isinstance(error, OSError) or not isinstance(error.filename, str):
        return
    with contextlib.suppress(ValueError):
        error.filename = str(path / Path(error.filename).relative_to(tmp))


def remove_leftovers(folder: Path) -> list[Path]:
    """Removes the temporary and set-aside folders that writers killed outright (SIGKILL, a
    power cut) left in ``folder``; only safe when no writer is at work there. Returns them."""
    found = [p for p in folder.glob(".*") if p.is_dir() and
             (TEMPORARY in p.name or SET_ASIDE in p.name)] if folder.is_dir() else []
    for leftover in found:
        shutil.rmtree(leftover, ignore_errors=True)
    return found


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_CWD = -100


@functools.cache
def _renameat2():
    """libc's renameat2 (Linux, glibc >= 2.28), or None."""
    return getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), "renameat2", None)


def _rename2(new: Path, path: Path, flags: int) -> bool | None:
    """renameat2 with ``flags``: True if done, False if ``path`` is in the way (NOREPLACE),
    None where the OS or the filesystem cannot do it."""
    call = _renameat2()
    if call is None:
        return None
    if call(_AT_CWD, os.fsencode(new), _AT_CWD, os.fsencode(path), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EEXIST, errno.ENOTEMPTY):
        return False
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return None
    raise OSError(err, os.strerror(err), str(path))


def _move_into_place(new: Path, path: Path) -> bool:
    """Moves ``new`` to ``path`` if nothing is there; False if something is. Never replaces:
    RENAME_NOREPLACE where the OS has it, else rename(2), which cannot replace a non-empty
    folder (and a finished run is never empty)."""
    done = _rename2(new, path, _RENAME_NOREPLACE)
    if done is not None:
        return done
    try:
        os.rename(new, path)
        return True
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return False
        raise


def _swap_in(new: Path, path: Path, overwrite: bool = False) -> None:
    """Moves the folder ``new`` to ``path``. An existing ``path`` is exchanged atomically (Linux
    renameat2) or, where that is missing, renamed aside first, and then removed; unless
    ``overwrite``, a finished run there is refused (`RunExists`), also one that appears between
    the check and the exchange: it is put back."""
    if _move_into_place(new, path):
        return
    if not overwrite and is_finished(path):
        raise RunExists(path)
    if _rename2(new, path, _RENAME_EXCHANGE):
        if not overwrite and is_finished(new):  # finished there after the check: put it back
            _rename2(new, path, _RENAME_EXCHANGE)
            raise RunExists(path)
        shutil.rmtree(new, ignore_errors=True)  # now holds the old result
        return
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}{SET_ASIDE}"))
    os.rename(path, old / "x")
    if not overwrite and is_finished(old / "x"):
        os.rename(old / "x", path)
        old.rmdir()
        raise RunExists(path)
    os.rename(new, path)
    shutil.rmtree(old, ignore_errors=True)
