"""faster_rcnn/sampling.py: the subset is of the candidates, of the asked size, reproducible."""

import numpy as np
import tensorflow as tf

from refinedet_tf.faster_rcnn.sampling import subsample


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


def test_compiles_with_xla():
    candidates = tf.constant(np.random.default_rng(1).uniform(size=(2, 100)) < 0.5)
    compiled = tf.function(lambda c: subsample(c, 10, seed=tf.constant([3, 4])), jit_compile=True)
    eager = subsample(candidates, 10, seed=tf.constant([3, 4]))
    np.testing.assert_array_equal(compiled(candidates).numpy(), eager.numpy())
