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


LABEL_ONLY = {"label_swap", "relabel", "label_noise"}
IMAGE_ONLY = {"class_transform", "gaussian_noise", "blur", "brightness", "contrast", "pixelate",
              "rotation"}


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(scenarios.SCENARIOS)), st.integers(0, 5), st.integers(0, 99))
def test_scenarios_change_only_what_they_name(name, severity, seed):
    images, labels = scenarios.apply(name, DS.images, DS.labels, jax.random.key(seed), severity)
    if name in LABEL_ONLY or name == "none":
        np.testing.assert_array_equal(images, DS.images)
    if name in IMAGE_ONLY or name == "none":
        np.testing.assert_array_equal(labels, DS.labels)
        assert images.shape == DS.images.shape and images.dtype == np.uint8
    if name in ("label_swap", "relabel"):  # classes other than 0 and 1 keep their labels
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


# --- Classes by name ---------------------------------------------------------------------------

AERIAL_NAMES = ("Meadow", "Farmland", "SparseResidential", "MediumResidential")
RNG = np.random.default_rng(0)
TILES = RNG.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)  # small random RGB "tiles"
TILE_LABELS = np.arange(48) % 4


@pytest.mark.parametrize("name, by_name, by_index", [
    ("label_swap", {"a": "Meadow", "b": "farmland"}, {"a": 0, "b": 1}),
    ("relabel", {"a": "sparse residential", "b": "MEDIUM_RESIDENTIAL"}, {"a": 2, "b": 3}),
    ("class_transform", {"a": "farmland", "kind": "invert"}, {"a": 1, "kind": "invert"}),
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
    config = with_overrides(DetectConfig(), ['scenario="relabel"', "severity=5",
                                             'scenario_params={"a": "meadow", "b": "farmland"}'])
    assert config.scenario_params == {"a": "meadow", "b": "farmland"}  # as --set gives it
    drifted, before, record = drifted_production(config, base, base, None)
    np.testing.assert_array_equal(before, TILE_LABELS)
    np.testing.assert_array_equal(drifted.labels, np.where(TILE_LABELS == 0, 1, TILE_LABELS))
    assert record["params"] == {"a": "meadow", "b": "farmland"}
