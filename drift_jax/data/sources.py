"""Data sources, by function and by spec string.

Specs (options after ``?`` as ``key=value`` pairs joined by ``&``):

  digits                                  scikit-learn's 8x8 digits (ships with the package)
  synthetic[?n=&classes=&size=&channels=&seed=]   seeded class-conditional patterns
  idx:DIR[?prefix=t10k&transpose=1]       MNIST / EMNIST IDX .gz files (EMNIST: transpose=1)
  folder:PATH[?split=train]               ImageFolder root/split/class/*.jpg|png, dir or .tar.gz
  tfds:NAME[:SPLIT][?data_dir=DIR]        tensorflow-datasets (prepared ArrayRecord data)

Local copies of TFDS data: set ``DRIFT_JAX_DATA_DIR`` to a folder of local copies and a
``tfds:NAME[:SPLIT]`` spec (without ``?data_dir=``) reads the local copy of that dataset and split
instead of TFDS, where ``LOCAL_COPIES`` names one and it is in the folder:

  tfds:cifar10[:train]   $DRIFT_JAX_DATA_DIR/cifar10-jpeg.tar.gz   (folder source, split train)
  tfds:cifar10:test      $DRIFT_JAX_DATA_DIR/cifar10-jpeg.tar.gz   (folder source, split test)
  tfds:mnist:test        $DRIFT_JAX_DATA_DIR/mnist-test/           (idx source, t10k files)

Any other dataset or split, or a copy missing from the folder, is read from TFDS as usual; if
that fails too, the error says which local copy was missing. The copies hold TFDS's classes in
TFDS's label order, so a spec means the same classes either way; the dataset's name records that
a local copy was read (``tfds:cifar10:train (local copy folder:...)``), since a JPEG copy is not
byte-identical to TFDS's images. Unset, the variable changes nothing.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import struct
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from drift_jax import validate
from drift_jax.data.dataset import Dataset
from drift_jax.errors import DriftJaxError
from drift_jax.files import atomic_save_npy, atomic_write_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


# --------------------------------------------------------------------------- digits / synthetic


def digits() -> Dataset:
    """scikit-learn's handwritten digits: 1,797 images, 8x8x1, values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return Dataset(images, d.target.astype(np.int32), tuple(str(c) for c in range(10)), "digits")


def synthetic(n: int = 1000, classes: int = 10, size: int = 16, channels: int = 1,
              seed: int = 0, noise: float = 0.25) -> Dataset:
    """Seeded class-conditional patterns: each class a smooth random template, plus pixel noise.

    Learnable but not trivially so; for tests and benchmarks. Classes are balanced (round robin).
    """
    if n < classes or classes < 2:
        raise DriftJaxError(f"synthetic: need classes >= 2 and n >= classes, got n={n}, "
                            f"classes={classes}.")
    if size < 1 or channels < 1 or seed < 0 or not np.isfinite(noise) or noise < 0:
        raise DriftJaxError(f"synthetic: size and channels must be >= 1, seed >= 0 and noise a "
                            f"finite number >= 0; got size={size}, channels={channels}, "
                            f"seed={seed}, noise={noise}.")
    # The float64 noise is the largest temporary: 8 bytes per pixel, plus the uint8 result.
    validate.check_memory(9.0 * n * size * size * channels, f"synthetic data of {n} images of "
                          f"{size}x{size}x{channels}", "lower n or size", device=False)
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (classes, 4, 4, channels))
    reps = -(-size // 4)
    templates = np.kron(coarse, np.ones((1, reps, reps, 1)))[:, :size, :size, :]
    labels = np.arange(n, dtype=np.int32) % classes
    rng.shuffle(labels)
    images = templates[labels] + noise * rng.standard_normal((n, size, size, channels))
    images = np.clip(np.round(images * 255), 0, 255).astype(np.uint8)
    return Dataset(images, labels, tuple(f"class_{i}" for i in range(classes)),
                   f"synthetic?n={n}&classes={classes}&size={size}&channels={channels}&seed={seed}")


# --------------------------------------------------------------------------- IDX (MNIST, EMNIST)


def _read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    if not path.exists():
        raise DriftJaxError(f"idx: missing file {path}; expected MNIST/EMNIST IDX files there.")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DriftJaxError(f"idx: cannot read {path} ({e}); the file is corrupt or truncated, "
                            "download it again.") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DriftJaxError(f"idx: {path} is not an unsigned-byte IDX file (bad magic number).")
    ndim = raw[3]
    if ndim != expected_ndim:
        raise DriftJaxError(f"idx: {path} has {ndim} dimensions, expected {expected_ndim}; "
                            "did you swap the images and labels files?")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DriftJaxError(f"idx: {path} is truncated inside its header; download it again.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise DriftJaxError(f"idx: {path} holds {len(raw) - header} data bytes, its header "
                            f"promises {size} for shape {shape}; the file is truncated or corrupt.")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _find_idx(directory: Path, prefix: str, kind: str) -> Path:
    patterns = [f"{prefix}-{kind}-idx*-ubyte.gz", f"{prefix}-{kind}-idx*-ubyte",
                f"{prefix}*{kind}*idx*ubyte*"]
    for pattern in patterns:
        found = sorted(directory.glob(pattern))
        if found:
            return found[0]
    raise DriftJaxError(f"idx: no '{prefix}' {kind} IDX file in {directory}; expected e.g. "
                        f"{prefix}-{kind}-idx{'3' if kind == 'images' else '1'}-ubyte.gz "
                        "(set ?prefix= to choose train or t10k).")


def idx(directory: str | os.PathLike, prefix: str = "t10k", transpose: bool = False,
        class_names: tuple[str, ...] | None = None) -> Dataset:
    """MNIST or EMNIST from IDX files: ``{prefix}-images-idx3-ubyte(.gz)`` and labels.

    EMNIST stores images transposed: ``transpose=True`` flips them back.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DriftJaxError(f"idx: directory {directory} does not exist; pass idx:DIR with "
                            "the folder that holds the IDX files.")
    images = _read_idx(_find_idx(directory, prefix, "images"), 3)
    labels = _read_idx(_find_idx(directory, prefix, "labels"), 1).astype(np.int32)
    if images.size == 0:  # no image, or images of no pixels: nothing to learn from
        raise DriftJaxError(f"idx: the images file in {directory} holds no images (shape "
                            f"{images.shape}); download the IDX files again or set ?prefix= to "
                            "the files that hold the data.")
    if images.shape[0] != labels.shape[0]:
        raise DriftJaxError(f"idx: {images.shape[0]} images but {labels.shape[0]} labels in "
                            f"{directory}; the two files do not belong together.")
    if transpose:
        images = images.transpose(0, 2, 1)
    if class_names is None:
        offset = int(labels.min()) if labels.size else 0  # EMNIST letters are labelled 1..26
        labels = labels - offset
        class_names = tuple(str(i + offset) for i in range(int(labels.max()) + 1))
    return Dataset(np.ascontiguousarray(images[..., None]), labels, class_names,
                   f"idx:{directory}?prefix={prefix}" + ("&transpose=1" if transpose else ""))


# --------------------------------------------------------------------------- ImageFolder


def _cache_dir() -> Path:
    from drift_jax.runtime import cache_root

    root = cache_root()
    if root.exists() and not root.is_dir():
        raise DriftJaxError(f"the cache folder {root} is a file; point DRIFT_JAX_CACHE at a "
                            "folder (or unset it for ~/.cache/drift_jax).")
    return root


def _read_cache(cached: Path, name: str) -> Dataset | None:
    """A decoded dataset from the cache, checked (keys, dtypes, shapes, label range); a missing,
    truncated or corrupt entry is removed and None returned, so the caller decodes afresh."""
    if not (cached / "meta.json").exists():
        return None
    try:
        meta = json.loads((cached / "meta.json").read_text())
        images = np.load(cached / "images.npy", allow_pickle=False)
        labels = np.load(cached / "labels.npy", allow_pickle=False)
        class_names = tuple(meta["class_names"])
        if (images.dtype != np.uint8 or images.ndim != 4 or labels.shape != images.shape[:1]
                or not np.issubdtype(labels.dtype, np.integer) or len(class_names) < 2
                or not all(isinstance(c, str) for c in class_names)
                or (labels.size and not 0 <= labels.min() <= labels.max() < len(class_names))):
            raise ValueError("unexpected contents")
        return Dataset(images, labels, class_names, name)
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        shutil.rmtree(cached, ignore_errors=True)  # rebuilt by the caller
        return None


# Caps on what one image may be: the file as stored, and its decoded pixels. A classifier's
# inputs are far smaller; a larger one is a mistake or a decompression bomb, refused unread.
MAX_IMAGE_FILE_BYTES = 64 * 2**20
MAX_IMAGE_PIXELS = 4096 * 4096
# Pillow modes read as one channel (alpha dropped); every other 8-bit mode is read as RGB.
GRAYSCALE_MODES = ("1", "L", "LA", "La")


def _decode(item: tuple[str, bytes]) -> np.ndarray:
    import warnings

    from PIL import Image, UnidentifiedImageError

    name, data = item
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise DriftJaxError(
                        f"folder: {name} declares {im.width}x{im.height} pixels, more than the "
                        f"{MAX_IMAGE_PIXELS:,} an image may have here; resize it or remove it.")
                im.load()
                if im.mode not in ("L", "RGB"):
                    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
                        raise DriftJaxError(
                            f"folder: {name} has {im.mode} pixels (16-bit or wider); convert "
                            "the images to 8-bit grayscale or RGB first.")
                    # 1-bit and grayscale-with-alpha images are grayscale: read as L, so that
                    # a folder of them is not taken for a mix of grayscale and colour.
                    im = im.convert("L" if im.mode in GRAYSCALE_MODES else "RGB")
                return np.asarray(im)
    except DriftJaxError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DriftJaxError(f"folder: {name} is a decompression bomb ({e}); remove it.") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DriftJaxError(f"folder: cannot decode {name} ({e}); the image is corrupt or "
                            "truncated: replace or delete it.") from e


def _decode_chunk(items: list[tuple[str, bytes]]) -> list[np.ndarray]:
    return [_decode(item) for item in items]


# Ctrl-C in a terminal (and a scheduler's SIGTERM to a whole job) reaches every process of the
# group; only the process that started the workers should answer it.
_PARENT_ONLY_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _decode_in_workers(chunks: list[list], workers: int) -> list[np.ndarray]:
    """Decodes ``chunks`` on ``workers`` processes, which start with Ctrl-C and SIGTERM blocked
    (the mask is inherited through fork and exec; the standard library starts its resource
    tracker so) and so never print a traceback of their own: this process handles the signal,
    the queued chunks are cancelled and the workers end after their current chunk. A signal
    that arrives while the workers are started waits, pending, and is not lost."""
    # spawn, not fork: the caller may already run JAX's threads, which fork would deadlock.
    pool = concurrent.futures.ProcessPoolExecutor(workers,
                                                  mp_context=multiprocessing.get_context("spawn"))
    try:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENT_ONLY_SIGNALS)
        try:
            futures = [pool.submit(_decode_chunk, chunk) for chunk in chunks]  # starts workers
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return [image for future in futures for image in future.result()]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_member_name(archive: Path, member: tarfile.TarInfo) -> None:
    p = PurePosixPath(member.name)
    if p.is_absolute() or ".." in p.parts:
        raise DriftJaxError(f"folder: archive {archive} has a member that escapes its folder "
                            f"({member.name!r}); refusing to read it.")
    if member.issym() or member.islnk():
        raise DriftJaxError(f"folder: archive {archive} has a link member ({member.name!r}); "
                            "links are refused, store plain files.")


def _class_of(relpath: PurePosixPath, split: str | None) -> str | None:
    """Class folder of an image path ``[top/]split/class/file``; None if it is not in the split."""
    if relpath.suffix.lower() not in IMAGE_SUFFIXES or len(relpath.parts) < 2:
        return None
    if split is None:
        return relpath.parts[-2]
    parts = relpath.parts
    if len(parts) >= 3 and parts[-3] == split:
        return parts[-2]
    return None


def _archive_items(archive: Path, split: str | None):
    if zipfile.is_zipfile(archive):
        raise DriftJaxError(f"folder: {archive} is a zip archive, which folder: does not read; "
                            "unzip it and pass the folder, or re-pack it as .tar.gz.")
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                _check_member_name(archive, member)
                if not member.isfile():
                    continue
                cls = _class_of(PurePosixPath(member.name), split)
                if cls is None:
                    continue
                if member.size > MAX_IMAGE_FILE_BYTES:
                    raise DriftJaxError(
                        f"folder: archive {archive} member {member.name} is {member.size:,} bytes "
                        f"unpacked, more than the {MAX_IMAGE_FILE_BYTES:,} an image file may "
                        "be; remove it (a decompression bomb is refused unread).")
                yield cls, member.name, tar.extractfile(member).read(MAX_IMAGE_FILE_BYTES + 1)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DriftJaxError(f"folder: cannot read archive {archive} ({e}); it is corrupt or "
                            "truncated.") from e


def _check_file_size(path: Path, size: int) -> None:
    if size > MAX_IMAGE_FILE_BYTES:
        raise DriftJaxError(f"folder: {path} is {size:,} bytes, more than the "
                            f"{MAX_IMAGE_FILE_BYTES:,} an image file may be; remove it.")


def _image_files(root: Path):
    """(relative path, path) of every image file under a folder, sorted."""
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            yield PurePosixPath(path.relative_to(root).as_posix()), path


def _directory_items(root: Path, split: str | None):
    for relpath, path in _image_files(root):
        cls = _class_of(relpath, split)
        if cls is None:
            continue
        _check_file_size(path, path.stat().st_size)
        yield cls, str(path), path.read_bytes()


# --------------------------------------------------------------------------- decoded-image cache

FINGERPRINT_VERSION = "v2"  # v1 keyed folders by names, sizes and mtimes


def _fingerprint(path: Path, split: str | None) -> str:
    """The decoded cache's key: the source's content, never its names and dates alone (a file
    replaced by another of the same name, size and mtime must not be served from the cache). An
    archive is its content hash; a folder, the relative path and content hash of each image
    file."""
    h = hashlib.sha256(f"{FINGERPRINT_VERSION}|{split}".encode())
    if path.is_file():
        h.update(_content_digests(path, [("", path)], image_files=False)[0].encode())
    else:
        files = list(_image_files(path))
        for (relpath, _), digest in zip(files, _content_digests(path, files, image_files=True)):
            h.update(f"{relpath}|{digest}\n".encode())
    return h.hexdigest()[:24]


def _file_identity(path: Path) -> list[int]:
    """What changes whenever a file's content may have: its inode, size, mtime and ctime. The
    ctime is in because a user can restore an mtime (os.utime, touch -d) but not a ctime."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _content_digests(source: Path, files: list, image_files: bool) -> list[str]:
    """The SHA-256 of each of ``files`` ((name, path) pairs of ``source``), read only when the
    file's identity differs from the one remembered beside its digest in the cache, so an
    unchanged source is not read again. ``image_files``: each is one image, held to the
    per-image size cap before it is read."""
    memo_path = _cache_dir() / "folder-digests" / (
        hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:24] + ".json")
    memo = _read_digest_memo(memo_path)
    fresh, digests = {}, []
    for name, path in files:
        identity = _file_identity(path)
        if image_files:
            _check_file_size(path, identity[2])  # a bomb is refused unread, not hashed
        known = memo.get(str(name))
        digest = known[1] if known and known[0] == identity else _sha256(path)
        fresh[str(name)] = [identity, digest]
        digests.append(digest)
    if fresh != memo:
        _write_to_cache(memo_path, lambda: atomic_write_json(memo_path, fresh, indent=None))
    return digests


def _read_digest_memo(path: Path) -> dict:
    """The remembered {name: [identity, digest]} of a source; empty when missing or damaged
    (then every file is hashed afresh)."""
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_to_cache(where: Path, write) -> None:
    """Runs ``write``; a failure (a full disk, a permission) is one error naming the cache
    folder and the ways around it."""
    try:
        write()
    except OSError as e:
        raise DriftJaxError(f"cannot write the decoded-image cache at {where} "
                            f"({e.strerror or e}); free space there, point DRIFT_JAX_CACHE at "
                            "another folder, or add ?cache=0 to the data spec.") from e


def _save_to_cache(cached: Path, dataset: Dataset) -> None:
    def write():
        try:
            atomic_save_npy(cached / "images.npy", dataset.images)
            atomic_save_npy(cached / "labels.npy", dataset.labels)
            atomic_write_json(cached / "meta.json", {"class_names": list(dataset.class_names),
                                                     "source": dataset.name})
        except OSError:
            shutil.rmtree(cached, ignore_errors=True)  # no half entry (meta.json comes last)
            raise

    _write_to_cache(cached, write)


def _decoded_bytes(payload: list[tuple[str, bytes]]) -> int:
    """The bytes the images will take decoded, from their headers alone (Pillow reads no pixel
    data on opening). An unreadable header counts nothing: the decoder names that file."""
    from PIL import Image

    total = 0
    for _, data in payload:
        try:
            with Image.open(io.BytesIO(data)) as im:
                total += im.width * im.height * (1 if im.mode in GRAYSCALE_MODES else 3)
        except Exception:  # any header Pillow cannot read: the decoder names the file
            continue
    return total


def check_decoding_memory(path: Path, payload: list[tuple[str, bytes]]) -> None:
    """Refuses, before decoding, a folder whose images would not fit once decoded: the decoded
    images, their stacked copy and the cache's serialised copy (each image may pass the
    per-image pixel cap while the folder as a whole does not fit)."""
    validate.check_memory(3.0 * _decoded_bytes(payload), f"decoding the {len(payload):,} images "
                          f"of {path}", "use a smaller folder or split, or a machine with more "
                          "memory", device=False)


def folder(path: str | os.PathLike, split: str | None = "train", workers: int | None = None,
           cache: bool = True) -> Dataset:
    """ImageFolder data, ``root/split/class/*.jpg|png``, from a directory or a .tar(.gz) of one.

    Decoded once with Pillow on all cores, then cached as .npy under ``$DRIFT_JAX_CACHE``
    (default ``~/.cache/drift_jax``), keyed by the content of the source (`_fingerprint`).
    Classes are the sorted class-folder names. ``split=None`` reads ``root/class/*`` directly.
    """
    path = Path(path)
    if not path.exists():
        raise DriftJaxError(f"folder: {path} does not exist; pass folder:PATH with an ImageFolder "
                            "directory or a .tar.gz of one.")
    name = f"folder:{path}?split={split}"
    cached = _cache_dir() / "folder" / _fingerprint(path, split) if cache else None
    if cached is not None and (hit := _read_cache(cached, name)) is not None:
        return hit
    items = list(_archive_items(path, split) if path.is_file() else _directory_items(path, split))
    if not items:
        raise DriftJaxError(f"folder: no images for split {split!r} in {path}; expected "
                            f"{'root/' + split + '/' if split else 'root/'}<class>/*.jpg|png "
                            "(set ?split= to the split folder's name).")
    class_names = tuple(sorted({cls for cls, _, _ in items}))
    class_index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([class_index[cls] for cls, _, _ in items], np.int32)
    payload = [(nm, data) for _, nm, data in items]
    check_decoding_memory(path, payload)
    workers = workers or os.cpu_count() or 1
    chunk = max(1, len(payload) // (workers * 8))
    chunks = [payload[i:i + chunk] for i in range(0, len(payload), chunk)]
    if workers > 1 and len(payload) > 256:
        decoded = _decode_in_workers(chunks, workers)
    else:
        decoded = _decode_chunk(payload)
    _check_one_shape(path, payload, decoded)
    images = np.stack(decoded)
    if images.ndim == 3:
        images = images[..., None]
    dataset = Dataset(images.astype(np.uint8, copy=False), labels, class_names, name)
    if cached is not None:
        _save_to_cache(cached, dataset)
    return dataset


def _check_one_shape(path: Path, payload: list, decoded: list[np.ndarray]) -> None:
    """All images must share one size and one channel count; the error names an example of
    each kind and the fix for the kind of mismatch."""
    kinds: dict[tuple, str] = {}
    for (name, _), im in zip(payload, decoded):
        kinds.setdefault(im.shape, name)
    if len(kinds) == 1:
        return
    channels = {shape[2] if len(shape) == 3 else 1 for shape in kinds}
    sizes = {shape[:2] for shape in kinds}
    examples = "; ".join(f"{name}: {'x'.join(map(str, shape))}" for shape, name in
                         list(kinds.items())[:3])
    if len(channels) > 1:
        fix = "a mix of grayscale and colour images: convert them all to one mode (RGB or L)"
    else:
        fix = f"{len(sizes)} different sizes: resize them to one size"
    raise DriftJaxError(f"folder: images in {path} are {fix} first ({examples}).")


# --------------------------------------------------------------------------- TFDS


def tfds(name: str, split: str = "train", data_dir: str | None = None) -> Dataset:
    """A tensorflow-datasets dataset read with ``tfds.data_source`` (reading needs no TensorFlow).

    The data must be prepared (ArrayRecord); preparing cifar10/mnist/emnist needs the ``tf`` extra
    and a network. Images come from the ``image`` feature, labels from ``label``.
    """
    try:
        import tensorflow_datasets as tfds_lib
    except ImportError as e:  # pragma: no cover - it is a runtime dependency
        raise DriftJaxError("tfds: tensorflow-datasets is not installed; pip install "
                            "tensorflow-datasets.") from e
    try:
        builder = tfds_lib.builder(name, data_dir=data_dir)
    except Exception as e:
        raise DriftJaxError(f"tfds: cannot find the dataset {name!r} ({type(e).__name__}: {e}); "
                            "check the name (tfds.list_builders()).") from e
    try:
        source = tfds_lib.data_source(name, split=split, data_dir=data_dir)
    except Exception as e:
        if not builder.is_prepared():  # the usual cause: name it, not the import it tripped on
            raise DriftJaxError(
                f"tfds: {name} is not prepared in {builder.data_dir}; prepare it once (pip "
                f"install 'drift_jax[tf]', then tfds build {name} --file_format=array_record), "
                "or pass ?data_dir= where it is prepared.") from e
        raise DriftJaxError(f"tfds: cannot open {name}:{split} ({type(e).__name__}: {e}); prepare "
                            "it first (pip install 'drift_jax[tf]', then tfds build "
                            f"{name} --file_format=array_record).") from e
    n = len(source)
    if n == 0:
        raise DriftJaxError(f"tfds: {name}:{split} is empty.")
    records = [source[i] for i in range(n)]
    images = np.stack([np.asarray(r["image"]) for r in records]).astype(np.uint8)
    labels = np.array([int(r["label"]) for r in records], np.int32)
    label_feature = builder.info.features["label"]
    class_names = tuple(getattr(label_feature, "names", None) or
                        [str(i) for i in range(label_feature.num_classes)])
    return Dataset(images, labels, class_names, f"tfds:{name}:{split}")


# ------------------------------------------------------------------- local copies of TFDS data

DATA_DIR_ENV = "DRIFT_JAX_DATA_DIR"

# (TFDS name, split) -> (source, file or folder under $DRIFT_JAX_DATA_DIR, source options). Each
# copy has TFDS's classes in TFDS's label order: CIFAR-10's class folders sort into its label order
# (airplane .. truck), and MNIST's IDX labels are the digits themselves.
LOCAL_COPIES: dict[tuple[str, str], tuple[str, str, dict]] = {
    ("cifar10", "train"): ("folder", "cifar10-jpeg.tar.gz", {"split": "train"}),
    ("cifar10", "test"): ("folder", "cifar10-jpeg.tar.gz", {"split": "test"}),
    ("mnist", "test"): ("idx", "mnist-test", {"prefix": "t10k"}),
}


def local_data_dir() -> Path | None:
    """The folder of local copies named by $DRIFT_JAX_DATA_DIR; None when it is unset or empty."""
    value = os.environ.get(DATA_DIR_ENV, "")
    if not value:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        # Refused rather than ignored: a mistyped folder would otherwise send every spec to TFDS.
        raise DriftJaxError(f"{DATA_DIR_ENV}={value} is not a folder; point it at the folder of "
                            "local dataset copies, or unset it to read TFDS.")
    return root


def _copy_in(root: Path, name: str, split: str) -> Path | None:
    """The local copy of ``name:split`` in ``root``; None if the table has none or it is absent."""
    entry = LOCAL_COPIES.get((name, split))
    if entry is None:
        return None
    path = root / entry[1]
    return path if path.exists() else None


def local_copy(name: str, split: str = "train") -> Path | None:
    """Where ``tfds:NAME:SPLIT``'s local copy lies under $DRIFT_JAX_DATA_DIR; None when the
    variable is unset, ``LOCAL_COPIES`` has no copy of it, or the copy is not in the folder."""
    root = local_data_dir()
    return None if root is None else _copy_in(root, name, split)


def _missing_copy_note(root: Path, name: str, split: str) -> str:
    entry = LOCAL_COPIES.get((name, split))
    if entry is not None:
        return (f"{DATA_DIR_ENV}={root} has no {entry[1]}, its local copy of {name}:{split}; "
                "put the copy there or prepare the dataset in TFDS.")
    known = ", ".join(f"{n}:{s}" for n, s in LOCAL_COPIES)
    return (f"{DATA_DIR_ENV} stands in for {known} only; {name}:{split} has to come from "
            "TFDS.")


def _read_local_copy(path: Path, name: str, split: str) -> Dataset:
    source, _, options = LOCAL_COPIES[(name, split)]
    loaded = folder(path, **options) if source == "folder" else idx(path, **options)
    # Named for both what was asked for and what was read: a JPEG copy is close to TFDS's
    # images, not equal to them, and a report should say which it used.
    return Dataset(loaded.images, loaded.labels, loaded.class_names,
                   f"tfds:{name}:{split} (local copy {loaded.name})")


def tfds_or_local_copy(name: str, split: str = "train", data_dir: str | None = None) -> Dataset:
    """What a ``tfds:NAME[:SPLIT]`` spec loads: the local copy under $DRIFT_JAX_DATA_DIR when it
    has one (and no ``data_dir`` asks for TFDS's own folder), else TFDS (see the module
    docstring)."""
    root = local_data_dir() if data_dir is None else None
    if root is None:
        return tfds(name, split, data_dir)
    path = _copy_in(root, name, split)
    if path is not None:
        return _read_local_copy(path, name, split)
    try:
        return tfds(name, split)
    except DriftJaxError as e:
        raise DriftJaxError(f"{e} {_missing_copy_note(root, name, split)}") from e


# --------------------------------------------------------------------------- specs


# What a boolean option accepts; anything else is refused rather than read as false.
BOOLEAN_WORDS = {"1": True, "true": True, "0": False, "false": False}


def _parse_options(query: str, allowed: dict[str, type], spec: str) -> dict:
    options = {}
    for pair in filter(None, query.split("&")):
        key, sep, value = pair.partition("=")
        if not sep or key not in allowed:
            raise DriftJaxError(f"data spec {spec!r}: unknown option {key!r}; allowed: "
                                f"{', '.join(sorted(allowed)) or 'none'}.")
        if key in options:
            raise DriftJaxError(f"data spec {spec!r}: option {key} is given twice; give each "
                                "option once.")
        options[key] = _option_value(spec, key, value, allowed[key])
    return options


def _option_value(spec: str, key: str, value: str, kind: type):
    if kind is bool:
        if value.lower() not in BOOLEAN_WORDS:
            raise DriftJaxError(f"data spec {spec!r}: option {key}={value!r} is not a boolean; "
                                "use 1, 0, true or false.")
        return BOOLEAN_WORDS[value.lower()]
    try:
        return kind(value)
    except ValueError as e:
        raise DriftJaxError(f"data spec {spec!r}: option {key}={value!r} is not a valid "
                            f"{kind.__name__}.") from e


def spec_paths(spec: str) -> list[str]:
    """The files and folders a spec reads (the folder or archive of ``idx:`` and ``folder:``, a
    ``tfds:`` spec's ``data_dir`` or local copy), so that no output is written over or into
    them; none for the embedded and generated data. Reads nothing."""
    if not isinstance(spec, str):
        return []
    head, _, query = spec.partition("?")
    kind, _, arg = head.partition(":")
    if kind in ("idx", "folder") and arg:
        return [arg]
    if kind != "tfds" or not arg:
        return []
    given = [value for key, _, value in (pair.partition("=") for pair in query.split("&"))
             if key == "data_dir" and value]
    name, _, split = arg.partition(":")
    copy = local_copy(name, split or "train") if not given else None
    return given + ([str(copy)] if copy is not None else [])


def load(spec: str) -> Dataset:
    """Loads a dataset from a spec string (see the module docstring)."""
    if not isinstance(spec, str) or not spec:
        raise DriftJaxError(f"data spec must be a non-empty string, got {spec!r}.")
    head, _, query = spec.partition("?")
    kind, _, arg = head.partition(":")
    if kind == "digits" and not arg:
        _parse_options(query, {}, spec)
        return digits()
    if kind == "synthetic" and not arg:
        return synthetic(**_parse_options(query, {"n": int, "classes": int, "size": int,
                                                  "channels": int, "seed": int, "noise": float},
                                          spec))
    if kind == "idx" and arg:
        return idx(arg, **_parse_options(query, {"prefix": str, "transpose": bool}, spec))
    if kind == "folder" and arg:
        opts = _parse_options(query, {"split": str, "cache": bool}, spec)
        if opts.get("split", "train").lower() in ("", "none"):
            opts["split"] = None
        return folder(arg, **opts)
    if kind == "tfds" and arg:
        name, _, split = arg.partition(":")
        return tfds_or_local_copy(name, split or "train",
                                  **_parse_options(query, {"data_dir": str}, spec))
    raise DriftJaxError(f"unknown data spec {spec!r}; use one of: digits, synthetic[?n=..], "
                        "idx:DIR, folder:PATH[?split=train], tfds:NAME[:SPLIT].")
