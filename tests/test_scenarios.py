import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drift_jax import data
from drift_jax.config import with_overrides
from drift_jax.data import scenarios
from drift_jax.detect.config import DetectConfig
from drift_jax.detect.plan import drifted_production
from drift_jax.errors import DriftJaxError

DS = data.synthetic(n=400, classes=4, size=8, channels=3, seed=0)
KEY = jax.random.key(0)


def test_none_changes_nothing():
    images, labels = scenarios.apply("none", DS.images, DS.labels, KEY)
    np.testing.assert_array_equal(images, DS.images)
    np.testing.assert_array_equal(labels, DS.labels)


def test_label_swap_moves_only_the_two_classes():
    images, labels = scenarios.apply("label_swap", DS.images, DS.labels, KEY, 5, a=0, b=1)
    np.testing.assert_array_equal(images, DS.images)
    np.testing.assert_array_equal(labels[DS.labels == 0], 1)
    np.testing.assert_array_equal(labels[DS.labels == 1], 0)
    np.testing.assert_array_equal(labels[DS.labels >= 2], DS.labels[DS.labels >= 2])
    _, half = scenarios.apply("label_swap", DS.images, DS.labels, KEY, 2, a=0, b=1)
    assert 0.3 < (half[DS.labels == 0] == 1).mean() < 0.5  # severity 2 -> 40 %


def test_relabel_and_noise_rates():
    _, relabelled = scenarios.apply("relabel", DS.images, DS.labels, KEY, 5, a=2, b=3)
    assert (relabelled[DS.labels == 2] == 3).all()
    np.testing.assert_array_equal(relabelled[DS.labels != 2], DS.labels[DS.labels != 2])
    _, noisy = scenarios.apply("label_noise", DS.images, DS.labels, KEY, 3)
    assert 0.15 < (noisy != DS.labels).mean() < 0.3  # 30 % redrawn, 3/4 of them change


@pytest.mark.parametrize("kind", ["invert", "rotate", "colour"])
def test_class_transform_touches_only_class_a(kind):
    images, labels = scenarios.apply("class_transform", DS.images, DS.labels, KEY, 5, a=1,
                                     kind=kind)
    np.testing.assert_array_equal(labels, DS.labels)
    np.testing.assert_array_equal(images[DS.labels != 1], DS.images[DS.labels != 1])
    assert (images[DS.labels == 1] != DS.images[DS.labels == 1]).any()


@pytest.mark.parametrize("name", ["gaussian_noise", "blur", "brightness", "contrast",
                                  "pixelate", "rotation"])
def test_covariate_corruptions_change_images_not_labels(name):
    images, labels = scenarios.apply(name, DS.images, DS.labels, KEY, 4)
    np.testing.assert_array_equal(labels, DS.labels)
    assert images.dtype == np.uint8 and images.shape == DS.images.shape
    assert np.abs(images.astype(int) - DS.images).mean() > 1
    same, _ = scenarios.apply(name, DS.images, DS.labels, KEY, 0)
    assert np.abs(same.astype(int) - DS.images).mean() < 1  # severity 0: (almost) no change


def test_prior_shift_drops_only_the_named_classes():
    images, labels = scenarios.apply("prior_shift", DS.images, DS.labels, KEY, 5, classes=(0,))
    counts, before = np.bincount(labels, minlength=4), DS.class_counts()
    assert counts[0] == round(before[0] * 0.1) and (counts[1:] == before[1:]).all()
    assert len(images) == len(labels)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(sorted(scenarios.SCENARIOS)), st.integers(0, 5), st.integers(0, 99))
def test_scenarios_are_pure_and_seeded(name, severity, seed):
    images, labels = DS.images.copy(), DS.labels.copy()
    a = scenarios.apply(name, images, labels, jax.random.key(seed), severity)
    b = scenarios.apply(name, images, labels, jax.random.key(seed), severity)
    np.testing.assert_array_equal(images, DS.images)  # inputs untouched
    np.testing.assert_array_equal(labels, DS.labels)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_bad_scenarios():
    with pytest.raises(DriftJaxError, match="unknown drift scenario"):
        scenarios.apply("earthquake", DS.images, DS.labels, KEY)
    with pytest.raises(DriftJaxError, match="severity must lie in 0..5"):
        scenarios.apply("blur", DS.images, DS.labels, KEY, 7)
    with pytest.raises(DriftJaxError, match="bad parameters"):
        scenarios.apply("label_swap", DS.images, DS.labels, KEY, 5, c=3)


LABEL_ONLY = {"label_swap", "relabel", "label_noise", "land_use"}
IMAGE_ONLY = {"class_transform", "gaussian_noise", "blur", "brightness", "contrast", "pixelate",
              "rotation", "seasonal", "sensor", "cloud"}


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(scenarios.SCENARIOS)), st.integers(0, 5), st.integers(0, 99))
def test_scenarios_change_only_what_they_name(name, severity, seed):
    images, labels = scenarios.apply(name, DS.images, DS.labels, jax.random.key(seed), severity)
    if name in LABEL_ONLY or name == "none":
        np.testing.assert_array_equal(images, DS.images)
    if name in IMAGE_ONLY or name == "none":
        np.testing.assert_array_equal(labels, DS.labels)
        assert images.shape == DS.images.shape and images.dtype == np.uint8
    if name in ("label_swap", "relabel", "land_use"):  # classes other than 0 and 1 keep theirs
        other = DS.labels > 1
        np.testing.assert_array_equal(labels[other], DS.labels[other])
        changed = (labels != DS.labels).sum()
        assert changed <= np.isin(DS.labels, (0, 1)).sum() * severity / 5 + 1
    if name == "prior_shift":  # a subset of the rows; only classes 0 and 1 lose images
        counts, before = np.bincount(labels, minlength=4), DS.class_counts()
        assert (counts[2:] == before[2:]).all() and (counts <= before).all()
    if severity == 0:  # severity 0 is no drift at all
        np.testing.assert_array_equal(images, DS.images)
        np.testing.assert_array_equal(labels, DS.labels)


# --- Overhead (aerial) imagery ----------------------------------------------------------------

AERIAL_NAMES = ("Meadow", "Farmland", "SparseResidential", "MediumResidential")
RNG = np.random.default_rng(0)
TILES = RNG.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)  # small random RGB "tiles"
TILE_LABELS = np.arange(48) % 4
GREEN_TILES = np.stack([RNG.integers(40, 110, (48, 32, 32)), RNG.integers(100, 180, (48, 32, 32)),
                        RNG.integers(30, 90, (48, 32, 32))], -1).astype(np.uint8)  # vegetation


def _shift(name, images, severity, **params):
    """Mean absolute pixel change of ``name`` at ``severity`` on ``images``."""
    out, _ = scenarios.apply(name, images, TILE_LABELS, KEY, severity, **params)
    return np.abs(out.astype(float) - images).mean()


def test_land_use_is_a_relabel_named_for_aerial_imagery():
    images, labels = scenarios.apply("land_use", TILES, TILE_LABELS, KEY, 3, a="Meadow",
                                     b="Farmland", class_names=AERIAL_NAMES)
    _, relabelled = scenarios.apply("relabel", TILES, TILE_LABELS, KEY, 3, a=0, b=1)
    np.testing.assert_array_equal(images, TILES)  # the ground changed use, not its look
    np.testing.assert_array_equal(labels, relabelled)
    assert (labels[TILE_LABELS == 0] == 1).sum() == round(0.6 * (TILE_LABELS == 0).sum())


@pytest.mark.parametrize("name, params", [("seasonal", {"kind": "autumn"}),
                                          ("seasonal", {"kind": "snow"}),
                                          ("seasonal", {"kind": "low_sun"}),
                                          ("sensor", {}), ("cloud", {})])
def test_aerial_image_scenarios_grow_with_severity_and_keep_labels(name, params):
    images = GREEN_TILES
    for severity in range(6):
        out, labels = scenarios.apply(name, images, TILE_LABELS, KEY, severity, **params)
        np.testing.assert_array_equal(labels, TILE_LABELS)
        assert out.dtype == np.uint8 and out.shape == images.shape
    np.testing.assert_array_equal(
        scenarios.apply(name, images, TILE_LABELS, KEY, 0, **params)[0], images)
    shifts = [_shift(name, images, severity, **params) for severity in range(6)]
    assert shifts[0] == 0 and all(np.diff(shifts) > 0), shifts


@pytest.mark.parametrize("kind", ["autumn", "snow", "low_sun"])
def test_seasonal_changes_only_the_named_class(kind):
    images, labels = scenarios.apply("seasonal", GREEN_TILES, TILE_LABELS, KEY, 5, a="farmland",
                                     kind=kind, class_names=AERIAL_NAMES)
    other, mine = TILE_LABELS != 1, TILE_LABELS == 1
    np.testing.assert_array_equal(images[other], GREEN_TILES[other])
    np.testing.assert_array_equal(labels, TILE_LABELS)
    before, after = GREEN_TILES[mine].astype(float), images[mine].astype(float)
    red, green, blue = (after - before).mean(axis=(0, 1, 2))
    if kind == "autumn":  # green -> brown: green falls, red rises relative to it
        assert green < -10 and red - green > 10
    if kind == "snow":  # brighter, greyer, bluish
        assert after.mean() > before.mean() + 40 and blue > red
        assert after.std(-1).mean() < before.std(-1).mean()  # channels closer: less saturated
    if kind == "low_sun":  # darker and warmer
        assert after.mean() < before.mean() - 20 and red - blue > 0


def test_seasonal_refuses_grey_images_and_unknown_kinds():
    grey = TILES[..., :1]
    with pytest.raises(DriftJaxError, match="seasonal changes colours and needs RGB"):
        scenarios.apply("seasonal", grey, TILE_LABELS, KEY, 3)
    with pytest.raises(DriftJaxError, match="autumn, snow, low_sun"):
        scenarios.apply("seasonal", TILES, TILE_LABELS, KEY, 3, kind="monsoon")


def _sharpness(images):
    """Mean absolute difference of horizontally neighbouring pixels (falls as blur grows)."""
    return np.abs(np.diff(images.astype(float), axis=2)).mean()


def test_sensor_blurs_more_with_severity_and_takes_grey_images():
    sharpness = [_sharpness(scenarios.apply("sensor", TILES, TILE_LABELS, KEY, s)[0])
                 for s in range(6)]
    assert all(np.diff(sharpness) < 0), sharpness
    grey = TILES[..., :1]
    out, _ = scenarios.apply("sensor", grey, TILE_LABELS, KEY, 4)
    assert out.shape == grey.shape and _sharpness(out) < _sharpness(grey)
    other_key, _ = scenarios.apply("sensor", TILES, TILE_LABELS, jax.random.key(1), 4)
    assert (other_key != scenarios.apply("sensor", TILES, TILE_LABELS, KEY, 4)[0]).any()


def test_cloud_occludes_a_growing_share_of_images_and_of_each_image():
    dark = TILES // 3  # clouds show as pixels brightened a lot
    changed_images, occluded = [], []
    for severity in range(6):
        out, _ = scenarios.apply("cloud", dark, TILE_LABELS, KEY, severity)
        brightened = out.astype(int) - dark > 100  # under a cloud's core, not just haze
        changed_images.append(int((out != dark).any(axis=(1, 2, 3)).sum()))
        occluded.append(brightened.mean())
    assert changed_images == [round(len(dark) * s / 5) for s in range(6)]
    assert occluded[0] == 0 and all(np.diff(occluded) > 0), occluded
    assert 0.2 < occluded[5] < 0.6  # about half of each image at severity 5
    grey, _ = scenarios.apply("cloud", dark[..., :1], TILE_LABELS, KEY, 3)
    assert grey.shape == (48, 32, 32, 1) and (grey != dark[..., :1]).any()


@pytest.mark.parametrize("name", ["land_use", "seasonal", "sensor", "cloud"])
def test_aerial_scenarios_are_deterministic_and_leave_inputs_alone(name):
    images, labels = TILES.copy(), TILE_LABELS.copy()
    first = scenarios.apply(name, images, labels, jax.random.key(7), 3)
    second = scenarios.apply(name, images, labels, jax.random.key(7), 3)
    np.testing.assert_array_equal(images, TILES)
    np.testing.assert_array_equal(labels, TILE_LABELS)
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name, by_name, by_index", [
    ("label_swap", {"a": "Meadow", "b": "farmland"}, {"a": 0, "b": 1}),
    ("relabel", {"a": "sparse residential", "b": "MEDIUM_RESIDENTIAL"}, {"a": 2, "b": 3}),
    ("land_use", {"a": "SparseResidential", "b": 3}, {"a": 2, "b": 3}),
    ("class_transform", {"a": "farmland", "kind": "invert"}, {"a": 1, "kind": "invert"}),
    ("seasonal", {"a": "meadow", "kind": "snow"}, {"a": 0, "kind": "snow"}),
    ("prior_shift", {"classes": ["Meadow", "MediumResidential"]}, {"classes": (0, 3)}),
    ("prior_shift", {"classes": "farmland"}, {"classes": (1,)}),
])
def test_classes_by_name_or_index_give_the_same_result(name, by_name, by_index):
    named = scenarios.apply(name, TILES, TILE_LABELS, KEY, 3, class_names=AERIAL_NAMES,
                            **by_name)
    indexed = scenarios.apply(name, TILES, TILE_LABELS, KEY, 3, **by_index)
    for x, y in zip(named, indexed):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("params, names, message", [
    ({"a": "Desert"}, AERIAL_NAMES, r"a='Desert' names no single class; the classes are "
                                    r"0 Meadow, 1 Farmland, 2 SparseResidential, 3 Medium"),
    ({"b": 4}, AERIAL_NAMES, r"b=4 is not a class index; the classes are 0 Meadow"),
    ({"a": -1}, None, r"a=-1 is not a class index; the data's class names are not known"),
    ({"a": "Meadow"}, None, r"names no single class; the data's class names are not known"),
    ({"a": 1.5}, AERIAL_NAMES, r"neither a class name nor an index"),
    ({"a": True}, AERIAL_NAMES, r"neither a class name nor an index"),
])
def test_bad_classes_are_refused_with_the_valid_ones(params, names, message):
    with pytest.raises(DriftJaxError, match=r"scenario relabel: .*" + message):
        scenarios.apply("relabel", TILES, TILE_LABELS, KEY, 3, class_names=names, **params)
    with pytest.raises(DriftJaxError, match="classes"):
        scenarios.apply("prior_shift", TILES, TILE_LABELS, KEY, 3, class_names=names,
                        classes=[0, *params.values()])


def test_a_detect_config_names_classes_for_the_production_data():
    base = data.Dataset(TILES, TILE_LABELS, AERIAL_NAMES, "tiles")
    config = with_overrides(DetectConfig(), ['scenario="land_use"', "severity=5",
                                             'scenario_params={"a": "meadow", "b": "farmland"}'])
    assert config.scenario_params == {"a": "meadow", "b": "farmland"}  # as --set gives it
    drifted, before, record = drifted_production(config, base, base, None)
    np.testing.assert_array_equal(before, TILE_LABELS)
    np.testing.assert_array_equal(drifted.labels, np.where(TILE_LABELS == 0, 1, TILE_LABELS))
    assert record["params"] == {"a": "meadow", "b": "farmland"}
