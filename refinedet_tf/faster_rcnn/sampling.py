"""Choosing at most k of the candidates of each row, in the graph and reproducibly.

The references draw with `np.random.choice` (py-faster-rcnn's anchor_target_layer and
proposal_target_layer, simple-faster-rcnn-pytorch's creator_tool); here each candidate gets a
key that is a hash of (seed, row, index) and the k largest keys win (one sort per row, no Python
loop, compiles with XLA). The keys come from integer arithmetic, not from a random-number kernel:
`tf.random.stateless_uniform` draws different numbers eager and under XLA when the seed is a
run-time tensor (each training step's seed is), so a run would not be reproducible across
`jit_compile`. Without a seed the first candidates by index win: the deterministic choice the
golden fixtures are computed with (they use settings that keep every candidate, where any rule
agrees).
"""

import tensorflow as tf

_MASK32 = 0xFFFFFFFF


_AND, _XOR = tf.bitwise.bitwise_and, tf.bitwise.bitwise_xor


def _shift_right(x, bits):
    return tf.bitwise.right_shift(x, tf.constant(bits, tf.int64))


def _multiply32(x, constant):
    """(x * constant) mod 2^32 for int64 x in [0, 2^32): split so no product overflows int64."""
    low, high = constant & 0xFFFF, constant >> 16
    high_part = tf.bitwise.left_shift(_AND(x * high, tf.constant(0xFFFF, tf.int64)), tf.constant(16, tf.int64))
    return _AND(x * low + high_part, tf.constant(_MASK32, tf.int64))


def _mix32(x):
    """MurmurHash3's 32-bit finalizer (fmix32): every input bit flips each output bit with
    probability ~1/2. int64 in [0, 2^32) -> int64 in [0, 2^32)."""
    x = _XOR(x, _shift_right(x, 16))
    x = _multiply32(x, 0x85EBCA6B)
    x = _XOR(x, _shift_right(x, 13))
    x = _multiply32(x, 0xC2B2AE35)
    return _XOR(x, _shift_right(x, 16))


def hash_keys(seed, shape):
    """int64 keys in [0, 2^32), one per entry of a [B, N] `shape`, from int [2] `seed`: the same
    numbers eager, in a tf.function, under XLA and on any device."""
    seed = _AND(tf.cast(tf.convert_to_tensor(seed), tf.int64), tf.constant(_MASK32, tf.int64))
    rows = tf.range(tf.cast(shape[0], tf.int64))[:, None]
    columns = tf.range(tf.cast(shape[1], tf.int64))[None, :]
    stream = _mix32(_XOR(seed[0], _mix32(_XOR(seed[1], tf.constant(0x9E3779B9, tf.int64)))))
    return _mix32(_XOR(columns, _mix32(_XOR(rows, stream))))


def subsample(candidates, max_selected, seed=None):
    """At most `max_selected` of the True entries of each row of `candidates`.

    Args:
      candidates: bool [B, N].
      max_selected: int, or int32 [B] (per row).
      seed: int [2] (a tensor may change from step to step), or None for the first candidates
        by index.
    Returns:
      bool [B, N]: a subset of `candidates` with min(max_selected, candidates in the row) True
      entries per row.
    """
    candidates = tf.convert_to_tensor(candidates, tf.bool)
    shape = tf.shape(candidates)
    if seed is None:
        keys = -tf.cast(tf.broadcast_to(tf.range(shape[-1]), shape), tf.int64)
    else:
        keys = hash_keys(seed, shape)
    keys = tf.where(candidates, keys, tf.constant(-(2**33), tf.int64))  # below every key
    order = tf.argsort(keys, axis=-1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=-1, stable=True)  # position of each entry in that order
    limit = tf.convert_to_tensor(max_selected, tf.int32)
    if limit.shape.rank == 1:
        limit = limit[:, None]
    return candidates & (rank < limit)
