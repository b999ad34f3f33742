"""faster_rcnn/sampling.py: the subset is of the candidates, of the asked size, reproducible."""

import numpy as np
import tensorflow as tf

from refinedet_tf.faster_rcnn.sampling import hash_keys, subsample


def test_without_a_seed_the_first_candidates_by_index_win():
    candidates = tf.constant([[False, True, True, False, True, True], [True, False, False, False, False, False]])
    chosen = subsample(candidates, 2).numpy()
    np.testing.assert_array_equal(chosen, [[False, True, True, False, False, False],
                                           [True, False, False, False, False, False]])
    per_row = subsample(candidates, tf.constant([3, 0])).numpy()
    np.testing.assert_array_equal(per_row, [[False, True, True, False, True, False], [False] * 6])


def test_seeded_draw_is_a_reproducible_subset_of_the_asked_size():
    rng = np.random.default_rng(0)
    candidates = tf.constant(rng.uniform(size=(3, 500)) < 0.3)
    chosen = subsample(candidates, 64, seed=tf.constant([1, 2])).numpy()
    assert not np.any(chosen & ~candidates.numpy())
    np.testing.assert_array_equal(chosen.sum(axis=1), np.minimum(candidates.numpy().sum(axis=1), 64))
    np.testing.assert_array_equal(chosen, subsample(candidates, 64, seed=tf.constant([1, 2])).numpy())
    assert not np.array_equal(chosen, subsample(candidates, 64, seed=tf.constant([1, 3])).numpy())
    # Not the first ones by index: a seeded draw spreads over the row.
    assert np.argwhere(chosen[0])[:, 0].max() > np.argwhere(candidates.numpy()[0])[:, 0][64]


def test_the_same_draw_eager_and_under_xla_with_a_seed_given_at_run_time():
    candidates = tf.constant(np.random.default_rng(1).uniform(size=(2, 100)) < 0.5)
    compiled = tf.function(lambda c, seed: subsample(c, 10, seed=seed), jit_compile=True)
    for seed in ([3, 4], [5, 6]):  # one trace, two seeds: the seed is a tensor of the graph
        eager = subsample(candidates, 10, seed=tf.constant(seed))
        np.testing.assert_array_equal(compiled(candidates, tf.constant(seed)).numpy(), eager.numpy())


def test_hash_keys_are_the_murmur3_finalizer_and_look_uniform():
    def fmix32(x):  # MurmurHash3's reference, in Python integers
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & 0xFFFFFFFF
        x ^= x >> 13
        x = (x * 0xC2B2AE35) & 0xFFFFFFFF
        return x ^ (x >> 16)

    keys = hash_keys(tf.constant([7, 11]), (3, 1000)).numpy()
    stream = fmix32(7 ^ fmix32(11 ^ 0x9E3779B9))
    assert keys[2, 5] == fmix32(5 ^ fmix32(2 ^ stream))
    assert keys.min() >= 0 and keys.max() < 2**32 and len(np.unique(keys)) == keys.size
    # Uniform enough to sample with: each eighth of the range holds 1/8 of 3000 keys within 4 sigma.
    counts = np.bincount(keys.reshape(-1) >> 29, minlength=8)
    assert np.all(np.abs(counts - 375) < 4 * np.sqrt(375 * 7 / 8))
