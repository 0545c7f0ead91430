import jax
import numpy as np

from drift_jax import streams


def test_streams_depend_on_seed_and_name_and_on_nothing_else():
    a = jax.random.key_data(streams.key(0, "train"))
    assert np.array_equal(a, jax.random.key_data(streams.key(0, "train")))  # reproducible
    others = [streams.key(1, "train"), streams.key(0, "init"), streams.key(0, "Train")]
    assert all(not np.array_equal(a, jax.random.key_data(k)) for k in others)
    draws = streams.generator(3, "controls").integers(0, 2**31, 8)
    assert np.array_equal(draws, streams.generator(3, "controls").integers(0, 2**31, 8))
    # no stream is another seed's: seed s + 1 of one name is not seed s of another
    assert not np.array_equal(streams.generator(4, "controls").integers(0, 2**31, 8),
                              streams.generator(3, "attack_rows").integers(0, 2**31, 8))
    assert not np.array_equal(draws, np.random.default_rng(3).integers(0, 2**31, 8))


def test_fold_names_sub_streams_of_one_key_or_a_batch_alike():
    keys = jax.random.split(jax.random.key(0), 3)
    batch = jax.random.key_data(streams.fold(keys, "rule_based"))
    one = [jax.random.key_data(streams.fold(k, "rule_based")) for k in keys]
    np.testing.assert_array_equal(batch, np.stack(one))
    assert not np.array_equal(batch, jax.random.key_data(streams.fold(keys, "black_box")))
