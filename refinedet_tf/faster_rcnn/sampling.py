"""Choosing at most k of the candidates of each row, in the graph and reproducibly.

The references draw with `np.random.choice` (py-faster-rcnn's anchor_target_layer and
proposal_target_layer, simple-faster-rcnn-pytorch's creator_tool); here each candidate gets a
stateless random key and the k largest keys win (one sort per row, no Python loop, compiles with
XLA), so a run with the same seed draws the same samples, eager, in a tf.function or under XLA.
Without a seed the first candidates by index win: the deterministic choice the golden fixtures are
computed with (they use settings that keep every candidate, where any rule agrees).
"""

import tensorflow as tf


def subsample(candidates, max_selected, seed=None):
    """At most `max_selected` of the True entries of each row of `candidates`.

    Args:
      candidates: bool [B, N].
      max_selected: int, or int32 [B] (per row).
      seed: int32 [2] for `tf.random.stateless_uniform`, or None for the first candidates by
        index.
    Returns:
      bool [B, N]: a subset of `candidates` with min(max_selected, candidates in the row) True
      entries per row.
    """
    candidates = tf.convert_to_tensor(candidates, tf.bool)
    shape = tf.shape(candidates)
    if seed is None:
        keys = -tf.cast(tf.broadcast_to(tf.range(shape[-1]), shape), tf.float32)
    else:
        # Philox by name: the default lets the device choose, and XLA and eager then draw differently.
        keys = tf.random.stateless_uniform(shape, seed, alg="philox")
    keys = tf.where(candidates, keys, -2.0 * tf.cast(shape[-1], tf.float32) - 1.0)  # below every key
    order = tf.argsort(keys, axis=-1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=-1, stable=True)  # position of each entry in that order
    limit = tf.convert_to_tensor(max_selected, tf.int32)
    if limit.shape.rank == 1:
        limit = limit[:, None]
    return candidates & (rank < limit)
