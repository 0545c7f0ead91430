import gzip
import io
import os
import re
import tarfile

import numpy as np
import pytest
from conftest import make_images, require_local_copy
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from drift_jax import data
from drift_jax.data import Dataset, sources
from drift_jax.errors import DriftJaxError

NAMES = ("a", "b", "c")


def test_dataset_accepts_valid_and_casts_labels():
    ds = Dataset(make_images(6), np.array([0, 1, 2, 0, 1, 2], np.int64), NAMES, "t")
    assert ds.labels.dtype == np.int32 and len(ds) == 6 and ds.num_classes == 3
    assert ds.class_counts().tolist() == [2, 2, 2]


@pytest.mark.parametrize("images, labels, names, message", [
    (make_images(4)[..., 0], np.zeros(4), NAMES, "rank 4"),
    (make_images(4).astype(np.float32) / 255, np.zeros(4), NAMES, "must be uint8"),
    (make_images(4, channels=2), np.zeros(4), NAMES, "1 or 3 channels"),
    (np.zeros((0, 8, 8, 1), np.uint8), np.zeros(0), NAMES, "empty"),
    (make_images(4), np.zeros(3), NAMES, "labels must have shape [4]"),
    (make_images(4), np.array([0, 1, 2, 3]), NAMES, "labels must lie in 0..2"),
    (make_images(4), np.array([0, -1, 2, 1]), NAMES, "labels must lie in 0..2"),
    (make_images(4), np.array([0.0, 1.0, 2.0, 1.0]), NAMES, "labels must be integers"),
    (make_images(4), np.zeros(4, int), ("only",), "at least 2 class names"),
])
def test_dataset_rejects_bad_input(images, labels, names, message):
    with pytest.raises(DriftJaxError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Dataset(images, np.asarray(labels), names, "t")


@pytest.mark.parametrize("bad, message", [
    (np.full((2, 4, 4, 1), np.nan, np.float32), "NaN or Inf"),
    (np.full((2, 4, 4, 1), 3.0, np.float32), r"must lie in \[0, 1\]"),
])
def test_from_float_images_rejects_nan_and_range(bad, message):
    with pytest.raises(DriftJaxError, match=message):
        data.from_float_images(bad, np.array([0, 1]), NAMES)


def test_digits_is_embedded_and_scaled():
    ds = data.digits()
    assert ds.images.shape == (1797, 8, 8, 1) and ds.images.dtype == np.uint8
    assert ds.images.max() == 255 and ds.num_classes == 10


def test_synthetic_is_seeded_and_learnable_by_template():
    a, b = data.synthetic(n=200, seed=3), data.synthetic(n=200, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, data.synthetic(n=200, seed=4).images)
    # Nearest class mean classifies well above chance: the patterns carry the label.
    x = a.images.reshape(len(a), -1).astype(float)
    means = np.stack([x[a.labels == c].mean(0) for c in range(a.num_classes)])
    pred = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), 1)
    assert (pred == a.labels).mean() > 0.9


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reads_written_files_and_transposes(tmp_path):
    images = make_images(5, size=6)[..., 0]
    images[:, 0, 1] = 7  # asymmetric marker
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 1, 0]))
    ds = data.load(f"idx:{tmp_path}?prefix=train")
    np.testing.assert_array_equal(ds.images[..., 0], images)
    ds_t = data.load(f"idx:{tmp_path}?prefix=train&transpose=1")
    np.testing.assert_array_equal(ds_t.images[..., 0], images.transpose(0, 2, 1))


def test_idx_truncated_file_is_named(tmp_path):
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2]))
    raw = bytes([0, 0, 8, 3]) + b"".join(int(s).to_bytes(4, "big") for s in (5, 6, 6))
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw + bytes(100))  # 180 bytes promised
    with pytest.raises(DriftJaxError, match="truncated or corrupt"):
        data.idx(tmp_path)


def test_idx_missing_directory():
    with pytest.raises(DriftJaxError, match="does not exist"):
        data.load("idx:/nonexistent/mnist")


def test_idx_real_mnist_test_set():
    ds = data.load(f"idx:{require_local_copy('mnist', 'test')}")
    assert ds.images.shape == (10000, 28, 28, 1)
    assert ds.class_counts().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    via_spec = data.load("tfds:mnist:test")  # what the experiments name
    np.testing.assert_array_equal(via_spec.images, ds.images)
    assert via_spec.name.startswith("tfds:mnist:test (local copy idx:")


def _png_bytes(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _make_folder(root, split="train", per_class=3, size=8):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        d = root / split / c
        d.mkdir(parents=True)
        for i in range(per_class):
            (d / f"{i}.png").write_bytes(
                _png_bytes(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))


def test_folder_directory_archive_and_cache(tmp_path):
    _make_folder(tmp_path / "root")
    ds = data.load(f"folder:{tmp_path / 'root'}")
    assert ds.class_names == ("cat", "dog") and ds.images.shape == (6, 8, 8, 3)
    archive = tmp_path / "root.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "root", arcname="root")
    from_tar = data.folder(archive)
    np.testing.assert_array_equal(from_tar.images, ds.images)
    cached = data.folder(archive)  # second read comes from the .npy cache
    np.testing.assert_array_equal(cached.images, ds.images)
    assert list((tmp_path / "cache" / "folder").glob("*/images.npy"))
    with pytest.raises(DriftJaxError, match="no images for split 'test'"):
        data.load(f"folder:{tmp_path / 'root'}?split=test")


def test_folder_corrupt_jpeg_is_named(tmp_path):
    _make_folder(tmp_path / "root")
    bad = tmp_path / "root" / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DriftJaxError, match="broken.jpg"):
        data.folder(tmp_path / "root")


@pytest.mark.parametrize("name", ["../evil/train/cat/0.png", "/abs/train/cat/0.png"])
def test_folder_archive_refuses_escaping_members(tmp_path, name):
    archive = tmp_path / "bad.tar.gz"
    payload = _png_bytes(np.zeros((8, 8, 3), np.uint8))
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(DriftJaxError, match="escapes its folder"):
        data.folder(archive)


def _bmp_bytes(array):
    """BMP is uncompressed: two images of one shape have one file size, whatever the pixels."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="BMP")
    return buf.getvalue()


def _bmp_folder(root, value=0):
    for c in ("cat", "dog"):
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            (root / "train" / c / f"{i}.bmp").write_bytes(
                _bmp_bytes(np.full((8, 8), value + i, np.uint8)))


def test_folder_cache_is_keyed_by_content_not_by_names_sizes_and_mtimes(tmp_path, monkeypatch):
    root = tmp_path / "root"
    _bmp_folder(root, value=10)
    first = data.load(f"folder:{root}")
    # Every file replaced by another image of the same name and size, its mtime put back.
    for path in sorted(root.rglob("*.bmp")):
        st = path.stat()
        other = _bmp_bytes(np.full((8, 8), 200, np.uint8))
        assert len(other) == st.st_size
        path.write_bytes(other)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert path.stat().st_mtime_ns == st.st_mtime_ns
    second = data.load(f"folder:{root}")
    assert (first.images < 20).all() and (second.images == 200).all()  # decoded afresh
    # An unchanged folder is not read again to be fingerprinted: the digests are remembered.
    hashed = []
    real_sha256 = sources._sha256
    monkeypatch.setattr(sources, "_sha256", lambda p: hashed.append(p) or real_sha256(p))
    third = data.load(f"folder:{root}")
    np.testing.assert_array_equal(third.images, second.images)
    assert hashed == []
    path = root / "train" / "dog" / "1.bmp"  # one file changes: only it is hashed again
    path.write_bytes(_bmp_bytes(np.full((8, 8), 99, np.uint8)))
    assert data.load(f"folder:{root}").images[-1, 0, 0, 0] == 99
    assert hashed == [path]


def test_folder_decoded_size_is_estimated_before_decoding(tmp_path, monkeypatch):
    """Many small images, each far under the per-image cap, that would not fit decoded: refused
    from their headers, before any is decoded."""
    from drift_jax import validate

    root = tmp_path / "root"
    _bmp_folder(root)
    monkeypatch.setattr(validate, "available_host_bytes", lambda: 200)  # 4 x 64 pixels do not fit
    monkeypatch.setattr(sources, "_decode_chunk", lambda items: pytest.fail("decoded"))
    with pytest.raises(DriftJaxError, match="decoding the 4 images of .* of host memory"):
        data.load(f"folder:{root}?cache=0")


@pytest.mark.parametrize("modes", [("L", "LA", "1"), ("1", "1"), ("LA", "L")])
def test_folder_of_grayscale_modes_is_grayscale(tmp_path, modes):
    """1-bit and grayscale-with-alpha PNGs are grayscale, not a mix of grayscale and colour."""
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i, mode in enumerate(modes):
            buf = io.BytesIO()
            Image.new(mode, (8, 8), (255, 128) if mode == "LA" else 255).save(buf, format="PNG")
            (tmp_path / "train" / c / f"{i}.png").write_bytes(buf.getvalue())
    ds = data.load(f"folder:{tmp_path}?cache=0")
    assert ds.images.shape == (2 * len(modes), 8, 8, 1) and (ds.images == 255).all()


def test_a_full_cache_disk_names_the_cache_path(tmp_path, monkeypatch):
    """A real full disk (a 64 KiB tmpfs as the cache, where the machine lets the tests mount
    one), else an injected one: one error naming the cache folder, and no half entry."""
    import errno
    import shutil
    import subprocess

    cache = tmp_path / "small-disk"
    cache.mkdir()
    mounted = os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(cache)],
        capture_output=True).returncode == 0
    try:
        if not mounted:  # not root: the same failure, injected where the cache writes
            def full(*args, **kwargs):
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(sources, "atomic_save_npy", full)
        monkeypatch.setenv("DRIFT_JAX_CACHE", str(cache))
        root = tmp_path / "root"
        for c in ("a", "b"):
            (root / "train" / c).mkdir(parents=True)
            for i in range(2):  # 2 x 2 x 128 x 128 x 3 bytes decoded: more than the 64 KiB
                (root / "train" / c / f"{i}.png").write_bytes(
                    _png_bytes(np.full((128, 128, 3), i, np.uint8)))
        with pytest.raises(DriftJaxError, match=f"cannot write the decoded-image cache at "
                                                f"{re.escape(str(cache))}.*No space left on "
                                                "device.*cache=0"):
            data.load(f"folder:{root}")
        assert not list((cache / "folder").glob("*/meta.json"))
        assert data.load(f"folder:{root}?cache=0").images.shape == (4, 128, 128, 3)
    finally:
        if mounted:
            subprocess.run(["umount", str(cache)], check=True)


def test_idx_files_with_no_images_are_named(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28), np.uint8))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(0, np.uint8))
    with pytest.raises(DriftJaxError, match="holds no images"):
        data.load(f"idx:{tmp_path}")


@pytest.mark.slow
def test_folder_real_cifar10_test_split():
    ds = data.load(f"folder:{require_local_copy('cifar10', 'test')}?split=test")
    assert ds.images.shape == (10000, 32, 32, 3)
    assert ds.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                              "horse", "ship", "truck")
    assert ds.class_counts().tolist() == [1000] * 10
    via_spec = data.load("tfds:cifar10:test")  # decoded once: this read comes from the cache
    np.testing.assert_array_equal(via_spec.labels, ds.labels)
    assert via_spec.class_names == ds.class_names


def test_tfds_reads_mock_data_without_network(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)  # TFDS itself, not a local copy
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load("tfds:mnist:test")
    assert ds.images.shape == (12, 28, 28, 1) and ds.num_classes == 10
    assert ds.name == "tfds:mnist:test"


# --------------------------------------------------------------------------- local copies


def _local_copies(root):
    """A folder of tiny local copies laid out as DRIFT_JAX_DATA_DIR expects: a CIFAR-10-like
    ImageFolder archive with train/ and test/ splits (3 and 2 images per class) and the MNIST
    test set's t10k IDX files (4 images)."""
    tree = root / "unpacked" / "cifar10-jpeg"
    _make_folder(tree, "train", per_class=3)
    _make_folder(tree, "test", per_class=2)
    root.mkdir(exist_ok=True)
    with tarfile.open(root / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        tar.add(tree, arcname="cifar10-jpeg")
    mnist = root / "mnist-test"
    mnist.mkdir()
    _write_idx(mnist / "t10k-images-idx3-ubyte.gz", make_images(4, size=6)[..., 0])
    _write_idx(mnist / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 1]))
    return root


def _tfds_unavailable(name, split="train", data_dir=None):
    raise DriftJaxError(f"tfds: {name} is not prepared in /nowhere; prepare it once.")


@pytest.mark.parametrize("spec, local, split, count", [
    ("tfds:cifar10", "cifar10-jpeg.tar.gz", "train", 6),
    ("tfds:cifar10:train", "cifar10-jpeg.tar.gz", "train", 6),
    ("tfds:cifar10:test", "cifar10-jpeg.tar.gz", "test", 4),
])
def test_local_copy_stands_in_for_tfds_cifar10(tmp_path, monkeypatch, spec, local, split, count):
    root = _local_copies(tmp_path / "local")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(root))
    monkeypatch.setattr(sources, "tfds", _tfds_unavailable)  # TFDS is never asked
    ds = data.load(spec)
    direct = data.folder(root / local, split=split)
    assert len(ds) == count and ds.class_names == ("cat", "dog")
    np.testing.assert_array_equal(ds.images, direct.images)
    np.testing.assert_array_equal(ds.labels, direct.labels)
    assert ds.name == f"tfds:cifar10:{split} (local copy {direct.name})"
    assert data.local_copy("cifar10", split) == root / local


def test_local_copy_stands_in_for_tfds_mnist_test(tmp_path, monkeypatch):
    root = _local_copies(tmp_path / "local")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(root))
    monkeypatch.setattr(sources, "tfds", _tfds_unavailable)
    ds = data.load("tfds:mnist:test")
    direct = data.idx(root / "mnist-test", prefix="t10k")
    np.testing.assert_array_equal(ds.images, direct.images)
    assert ds.labels.tolist() == [0, 1, 2, 1] and ds.image_shape == (6, 6, 1)
    assert ds.name == f"tfds:mnist:test (local copy {direct.name})"


def test_without_a_local_copy_tfds_is_asked(tmp_path, monkeypatch):
    asked = []

    def fake_tfds(name, split="train", data_dir=None):
        asked.append((name, split, data_dir))
        return data.synthetic(n=20, classes=2, size=4)

    monkeypatch.setattr(sources, "tfds", fake_tfds)
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    data.load("tfds:cifar10:test")  # no override: TFDS
    assert data.local_copy("cifar10", "test") is None
    root = _local_copies(tmp_path / "local")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(root))
    data.load("tfds:mnist")  # the MNIST training split has no local copy
    data.load("tfds:emnist/digits:test")  # nor has EMNIST
    data.load(f"tfds:cifar10:test?data_dir={tmp_path}")  # TFDS's own folder, asked for by name
    assert asked == [("cifar10", "test", None), ("mnist", "train", None),
                     ("emnist/digits", "test", None), ("cifar10", "test", str(tmp_path))]


def test_missing_local_copy_is_named_when_tfds_fails_too(tmp_path, monkeypatch):
    root = tmp_path / "local"
    root.mkdir()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(root))
    monkeypatch.setattr(sources, "tfds", _tfds_unavailable)
    with pytest.raises(DriftJaxError, match="not prepared.*has no cifar10-jpeg.tar.gz, its local "
                                            "copy of cifar10:test"):
        data.load("tfds:cifar10:test")
    with pytest.raises(DriftJaxError, match="not prepared.*stands in for cifar10:train, "
                                            "cifar10:test, mnist:test only; mnist:train"):
        data.load("tfds:mnist:train")


def test_local_data_dir_that_is_not_a_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "typo"))
    with pytest.raises(DriftJaxError, match="DRIFT_JAX_DATA_DIR=.*typo is not a folder"):
        data.load("tfds:cifar10")
    data.load("digits")  # only tfds: specs consult it


@pytest.mark.parametrize("spec, message", [
    ("imagenet", "unknown data spec"),
    ("synthetic?bogus=1", "unknown option 'bogus'"),
    ("synthetic?n=abc", "not a valid int"),
    ("folder:/no/such/place", "does not exist"),
    ("tfds:mnist?bogus=1", "unknown option 'bogus'"),
    ("synthetic?n=100&n=200", "option n is given twice"),  # not: the last one wins
    ("idx:/no/such/place?transpose=maybe", "is not a boolean; use 1, 0, true or false"),
    ("folder:/no/such/place?cache=yes", "is not a boolean"),
])
def test_bad_specs(spec, message):
    with pytest.raises(DriftJaxError, match=message):
        data.load(spec)


def test_splits_are_disjoint_stratified_and_seeded():
    labels = np.repeat(np.arange(4), 50)
    a = data.base_production_holdout(labels, seed=1)
    b = data.base_production_holdout(labels, seed=1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.base, data.base_production_holdout(labels, seed=2).base)
    together = np.concatenate(a)
    assert len(np.unique(together)) == len(together) == 200
    for part, share in zip(a, (0.4, 0.4, 0.2)):
        np.testing.assert_array_equal(np.bincount(labels[part]), [share * 50] * 4)


def test_split_with_a_class_too_small_names_it():
    labels = np.array([0] * 20 + [1] * 2)
    with pytest.raises(DriftJaxError, match="class 1 has 2 images"):
        data.base_production_holdout(labels, seed=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(10, 60), min_size=2, max_size=6),
       st.lists(st.floats(0.1, 0.3), min_size=1, max_size=3), st.integers(0, 1000))
def test_split_properties(class_sizes, fractions, seed):
    """Disjoint, in range, stratified to within one image per class, seeded."""
    labels = np.repeat(np.arange(len(class_sizes)), class_sizes)
    np.random.default_rng(seed).shuffle(labels)
    parts = data.stratified_split(labels, fractions, seed)
    again = data.stratified_split(labels, fractions, seed)
    together = np.concatenate(parts)
    assert len(np.unique(together)) == len(together)  # disjoint
    assert together.min() >= 0 and together.max() < len(labels)
    for part, other, fraction in zip(parts, again, fractions):
        np.testing.assert_array_equal(part, other)  # same seed, same split
        counts = np.bincount(labels[part], minlength=len(class_sizes))
        assert (np.abs(counts - np.array(class_sizes) * fraction) <= 1 + 1e-9).all()
