"""RoI pooling for the Faster R-CNN head: RoIPool (the papers' and the references' op) and
RoIAlign, from gathers and arithmetic only.

No `tf.image.crop_and_resize`: it is not a TFLite built-in and does not compile with XLA, and it
is neither op anyway. The converted graphs hold only GATHER, PAD, SLICE, CONCATENATION, RESHAPE,
elementwise arithmetic (ADD, SUB, MUL, MAXIMUM, MINIMUM, FLOOR, FLOOR_DIV, FLOOR_MOD, CAST),
comparisons, SELECT and SUM, so both functions compile with XLA (`jit_compile=True`) and convert
to TFLite with `TFLITE_BUILTINS` only (tests/test_frcnn_roi_pooling.py does both).

Inputs (both functions):
  features: [B, H, W, C] (NHWC), H and W static.
  rois_yxyx_px: [B, R, 4] float, (y_min, x_min, y_max, x_max) in pixels of the network's input
    (the resized, padded canvas; the feature map is that canvas scaled by `spatial_scale`).
  valid: [B, R] bool or None (all valid). Rows where it is False give 0 and their coordinates
    are never used (padding may hold anything, NaN included).
Output: [B, R, P, P, C] (P = output_size; a pair gives [B, R, Ph, Pw, C]), features' dtype.

Why [B, R, 4] with a mask rather than flat RoIs with batch indices ([K, 5], torchvision's
form): everything around the pooling is batched per image with fixed shapes: proposals come as
[B, 2000 or 300, 4] with valid counts (NMS can return fewer), RoI sampling picks per image
([B, N] rows, `sampling.subsample`) and the losses normalize per image. A per-image layout keeps
that structure end to end, needs no segment ops to go back from flat RoIs to images, and the batch
index is implicit in the gather offset (b * H * W), which costs the same as an explicit index.
"""

import numpy as np
import tensorflow as tf

# Scaled coordinates are clamped to +-2^19 cells (8.4 million pixels at stride 16): RoI sizes then
# stay below 2^20 + 2 cells, where the integer bin arithmetic of `roi_pool` equals the reference's
# float32 arithmetic (for 7 bins; see `_float32_ceil_excess`) and int32 products cannot overflow.
_COORD_LIMIT = float(2**19)


def _pair(size):
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"output_size must be an int or a pair, got {size}")
    return size


def _check_inputs(features, rois_yxyx_px, valid):
    features = tf.convert_to_tensor(features)
    rois = tf.convert_to_tensor(rois_yxyx_px)
    if features.shape.rank != 4:
        raise ValueError(f"expected features [B, H, W, C], got shape {features.shape}")
    if features.shape[1] is None or features.shape[2] is None or features.shape[3] is None:
        raise ValueError(f"features need a static height, width and depth, got shape {features.shape}")
    if rois.shape.rank != 3 or rois.shape[-1] != 4:
        raise ValueError(f"expected rois_yxyx_px [B, R, 4], got shape {rois.shape}")
    rois = tf.cast(rois, tf.float32)
    if valid is None:
        valid = tf.ones(tf.shape(rois)[:2], tf.bool)
    else:
        valid = tf.cast(valid, tf.bool)
        if valid.shape.rank != 2:
            raise ValueError(f"expected valid [B, R] (as rois_yxyx_px), got shape {valid.shape}")
    # Padding rows may hold anything (NaN included): they are computed as (0, 0, 0, 0).
    rois = tf.where(valid[..., None], rois, 0.0)
    return features, rois, valid


def c_round(x):
    """C's `round` (half away from zero) of float32 `x`, exactly: 0.5 -> 1, 2.5 -> 3, -0.5 -> -1.

    `tf.round` rounds half to even (2.5 -> 2) and differs on the fixture. `sign(x) * floor(|x| +
    0.5)`, the usual spelling, is wrong where |x| + 0.5 itself rounds: 0.49999997 -> 1 (C gives
    0) and odd integers from 2^23 on. Here floor(|x|) + (|x| - floor(|x|) >= 0.5); the
    subtraction is exact in float32 (Sterbenz), so this is C's round for every float.
    """
    a = tf.abs(x)
    r = tf.floor(a)
    r = r + tf.cast(a - r >= 0.5, x.dtype)
    return tf.where(x < 0.0, -r, r)


def _bit_length(n, max_bits):
    """Number of bits of int32 n >= 0 (n < 2^max_bits), by comparisons (no CLZ in TFLite)."""
    powers = tf.constant([2**j for j in range(max_bits)], tf.int32)
    return tf.reduce_sum(tf.cast(n[..., None] >= powers, tf.int32), axis=-1)


def _float32_ceil_excess(n, pooled):
    """1 where float32 `ceil(P * (n / P))` exceeds n, else 0 (int32 n in [1, 2^23)).

    The reference computes bin edges in float32 (`bin = float(n) / P`, edge k = floor(k * bin)
    or ceil(k * bin)). For k < P the integer formulas floor(k n / P) and ceil(k n / P) give the
    same edges (checked for every n up to 2^20 with P = 7, in the tests), but the last edge
    ceil(P * fl(n / P)) is n + 1 for some n (57, 114, 121, ... for P = 7): the last bin then
    takes one more row or column. It cannot be computed in float32 here: XLA rewrites a
    division by a constant into a multiplication by its reciprocal, which moves these edges
    (thousands of n below 20000 for P = 7). So the rounding is done in integers:

    With P = 2^a * Q, Q odd (powers of two divide exactly: no excess), q = fl(n / Q) has a 24-bit
    mantissa m = round(n 2^t / Q) for the t that puts n 2^t / Q in [2^23, 2^24); Q q = n + d 2^-t
    exactly, d = Q m - n 2^t, and float32 rounds that up to n + ulp(n) iff d 2^-t > ulp(n) / 2
    (a tie goes to n, whose mantissa is even for n < 2^23). With L = bit_length(n), M =
    bit_length(Q): t = M + 23 - L and the condition is d > 2^(M-2) when n >= Q 2^(L-M), else
    t = M + 24 - L and d > 2^(M-1). d > 0 means r = n 2^t mod Q > (Q - 1) / 2 and d = Q - r.
    """
    odd = pooled
    while odd % 2 == 0:
        odd //= 2
    if odd == 1:
        return tf.zeros_like(n)
    m_bits = odd.bit_length()
    lengths = range(25)
    # Per bit length L: threshold Q 2^(L-M) (ceil for L < M), 2^t mod Q for both cases.
    threshold = np.array([-(-odd * 2**bl // 2**m_bits) for bl in lengths], np.int32)
    pow_upper = np.array([pow(2, m_bits + 23 - bl, odd) for bl in lengths], np.int32)
    pow_lower = np.array([pow(2, m_bits + 24 - bl, odd) for bl in lengths], np.int32)
    bits = _bit_length(n, 24)
    upper = n >= tf.gather(threshold, bits)
    power = tf.where(upper, tf.gather(pow_upper, bits), tf.gather(pow_lower, bits))
    r = tf.math.floormod(tf.math.floormod(n, odd) * power, odd)
    limit = tf.where(upper, 2 ** (m_bits - 2), 2 ** (m_bits - 1))
    return tf.cast((2 * r > odd - 1) & (odd - r > limit), tf.int32)


def roi_pool_bins(start, end, pooled, size):
    """Bin edges of RoIPool along one axis, as the reference computes them.

    Args:
      start, end: int32 [...]: the RoI's first and last cell (rounded scaled coordinates).
      pooled: P, the number of bins.
      size: H or W, the feature map's extent.
    Returns:
      lo, hi: int32 [..., P]: bin p covers cells lo <= i < hi, clipped to [0, size] (empty
      when hi <= lo).
    """
    n = tf.maximum(end - start + 1, 1)  # +1: legacy Caffe; a RoI covers at least one cell
    k = tf.range(pooled, dtype=tf.int32)
    lo = (k * n[..., None]) // pooled
    hi_inner = ((k[:-1] + 1) * n[..., None] + pooled - 1) // pooled
    hi_last = (n + _float32_ceil_excess(n, pooled))[..., None]
    hi = tf.concat([hi_inner, hi_last], axis=-1)
    lo = tf.clip_by_value(lo + start[..., None], 0, size)
    hi = tf.clip_by_value(hi + start[..., None], 0, size)
    return lo, hi


def _window_levels(size):
    """Levels of the sparse table along an axis of `size` cells: windows 1, 2, 4, ... <= size."""
    return int(size).bit_length()


def _max_tables(features, levels_h, levels_w):
    """The 2-D sparse table of running maxima, flattened: [Lw * Lh * B * H * W, C].

    Level (kh, kw) at (b, y, x), row ((kw * Lh + kh) * B + b) * H * W + y * W + x, holds
    max(features[b, y:y + 2^kh, x:x + 2^kw]); entries whose window leaves the map hold partial
    maxima and are never read. Built by doubling: all row levels stacked along the batch axis,
    then the column levels of that stack (Lh - 1 + Lw - 1 shifted maxima, 4-D tensors only).
    """
    def doubled(table, axis, shift):
        pad = [[0, 0]] * 4
        pad[axis] = [0, shift]
        begin = [0, 0, 0, 0]
        begin[axis] = shift
        return tf.maximum(table, tf.pad(tf.slice(table, begin, [-1, -1, -1, -1]), pad))

    rows = [features]
    for kh in range(1, levels_h):
        rows.append(doubled(rows[-1], 1, 2 ** (kh - 1)))
    table = tf.concat(rows, axis=0)  # [Lh B, H, W, C]
    tables = [table]
    for kw in range(1, levels_w):
        tables.append(doubled(tables[-1], 2, 2 ** (kw - 1)))
    return tf.reshape(tf.concat(tables, axis=0), [-1, features.shape[-1]])


def _query(lo, hi, levels, size):
    """Sparse-table lookup of the windows [lo, hi) along one axis.

    Returns the level k = floor(log2(hi - lo)), the two window starts lo and hi - 2^k (two
    windows of 2^k cells that cover [lo, hi)) and `empty` (hi <= lo). Starts are clamped into
    the map (an empty bin may start at `size`), so every index is in range whatever the input.
    """
    length = hi - lo
    empty = length <= 0
    length = tf.maximum(length, 1)
    level = tf.zeros_like(length)
    if levels > 1:
        powers = tf.constant([2**j for j in range(1, levels)], tf.int32)
        level = tf.reduce_sum(tf.cast(length[..., None] >= powers, tf.int32), axis=-1)
    window = tf.gather(tf.constant([2**j for j in range(levels)], tf.int32), level)
    first = tf.clip_by_value(lo, 0, size - 1)
    second = tf.clip_by_value(lo + length - window, 0, size - 1)
    return level, first, second, empty


def roi_pool(features, rois_yxyx_px, valid=None, output_size=7, spatial_scale=1.0 / 16.0):
    """RoIPool as Caffe's ROIPooling layer and torchvision's `ops.RoIPool` compute it, exactly
    (py-faster-rcnn's caffe-fast-rcnn `src/caffe/layers/roi_pooling_layer.cpp`, torchvision's
    `csrc/ops/cpu/roi_pool_kernel.cpp`; simple-faster-rcnn-pytorch's head calls the latter).

    Per RoI and axis: start = round(y_min * scale), end = round(y_max * scale) with C's round
    (half away from zero, `c_round`); n = max(end - start + 1, 1) cells (+1: legacy Caffe); bin p
    covers start + floor(p n / P) .. start + ceil((p + 1) n / P) (exclusive; the last edge as the
    reference's float32 gives it, see `_float32_ceil_excess`), clipped to the map; the output is
    the max over the bin's cells, 0 for an empty bin. RoIs may cross the map's borders; scaled
    coordinates are clamped to +-2^19 cells.

    Memory and compute. A bin of an n-cell RoI spans up to ceil(n / P) + 1 cells, and up to the
    whole map for a RoI larger than the map, so a window gather bounded by the largest bin needs
    R P^2 K^2 C floats (K = 11 for proposals on a 1008 canvas: 3.6 GB at R = 300, C = 512).
    Instead, a 2-D sparse table (range-maximum query):
    level (kh, kw) holds the max over every 2^kh x 2^kw window of the map, and a bin [y0, y1) x
    [x0, x1) is the max of four (overlapping) windows of 2^floor(log2(y1 - y0)) x
    2^floor(log2(x1 - x0)) cells that cover it exactly, whatever its size. With Lh =
    bit_length(H), Lw = bit_length(W) levels per axis:
      memory: the table, Lh Lw B H W C floats, plus four gathers of B R P^2 C floats;
      compute: (Lh - 1 + (Lw - 1) Lh) B H W C maxima to build the table (by doubling), 3 B R P^2
      C to combine the gathers; no dependence on the RoIs' sizes.
    On a 63 x 63 x 512 map (1008 canvas): 36 levels = 292 MB per image (its gradient as much),
    and 4 x 30 MB of gathers at R = 300 (4 x 13 MB at 128): about a tenth of the bounded
    gather. Gradients follow the gathers and `tf.maximum` (which passes its gradient to one of
    its arguments), so each output sends its gradient to one cell that reaches its max, as the
    reference's argmax does (on ties the cell may differ).

    Exactness: the bin edges are the reference's for P = 7 and every P up to 13 (tested for all
    RoI sizes up to the clamp with P = 7); for P with an even factor and an odd factor >= 7 (14,
    22, ...) an inner edge can differ from the float32 reference by one cell for some sizes.

    Args: see the module docstring; output_size: P (int or pair); spatial_scale: feature cells
      per input pixel.
    Returns: [B, R, Ph, Pw, C].
    """
    features, rois, valid = _check_inputs(features, rois_yxyx_px, valid)
    pooled_h, pooled_w = _pair(output_size)
    _, height, width, depth = features.shape
    batch = tf.shape(features)[0]
    num_rois = tf.shape(rois)[1]

    scaled = tf.clip_by_value(rois * tf.constant(spatial_scale, tf.float32), -_COORD_LIMIT, _COORD_LIMIT)
    cells = tf.cast(c_round(scaled), tf.int32)  # [B, R, 4]
    lo_y, hi_y = roi_pool_bins(cells[..., 0], cells[..., 2], pooled_h, height)  # [B, R, Ph]
    lo_x, hi_x = roi_pool_bins(cells[..., 1], cells[..., 3], pooled_w, width)  # [B, R, Pw]

    levels_h, levels_w = _window_levels(height), _window_levels(width)
    level_y, y0, y1, empty_y = _query(lo_y, hi_y, levels_h, height)
    level_x, x0, x1, empty_x = _query(lo_x, hi_x, levels_w, width)
    table = _max_tables(features, levels_h, levels_w)

    image = tf.range(batch, dtype=tf.int32)[:, None, None, None]
    level = level_x[..., None, :] * levels_h + level_y[..., :, None]  # [B, R, Ph, Pw]
    base = ((level * batch + image) * height) * width

    def gather(y, x):
        index = base + y[..., :, None] * width + x[..., None, :]
        return tf.gather(table, tf.reshape(index, [-1]))  # [B R Ph Pw, C]

    pooled = tf.maximum(tf.maximum(gather(y0, x0), gather(y0, x1)),
                        tf.maximum(gather(y1, x0), gather(y1, x1)))
    keep = (~empty_y[..., :, None]) & (~empty_x[..., None, :]) & valid[:, :, None, None]
    pooled = tf.where(tf.reshape(keep, [-1, 1]), pooled, tf.zeros([], pooled.dtype))
    return tf.reshape(pooled, tf.stack([batch, num_rois, pooled_h, pooled_w, depth]))


def _align_axis(start, end, pooled, sampling_ratio, size, aligned):
    """Per RoI and axis: the cells and bilinear weights of RoIAlign's samples.

    Returns index, weight: [..., P * 2g] (bin p, sample i, low/high neighbour), weights already
    zero for samples outside [-1, size] (torchvision's rule) and not yet divided by g^2.
    """
    extent = end - start
    if not aligned:
        extent = tf.maximum(extent, 1.0)  # legacy: a RoI of at least one cell
    bin_size = extent * (1.0 / pooled)  # as XLA and TFLite compute `extent / pooled` anyway
    p = tf.range(pooled, dtype=tf.float32)[:, None]  # [P, 1]
    i = tf.range(sampling_ratio, dtype=tf.float32)[None, :] + 0.5  # [1, g]
    start = start[..., None, None]
    bin_size = bin_size[..., None, None]
    pos = start + p * bin_size + i * bin_size * (1.0 / sampling_ratio)  # [..., P, g]
    inside = (pos >= -1.0) & (pos <= float(size))
    pos = tf.maximum(pos, 0.0)
    low = tf.floor(pos)
    last = low >= float(size - 1)
    low = tf.where(last, float(size - 1), low)
    pos = tf.where(last, low, pos)
    frac = pos - low
    low_i = tf.cast(low, tf.int32)
    high_i = tf.where(last, low_i, low_i + 1)
    index = tf.stack([low_i, high_i], axis=-1)  # [..., P, g, 2]
    weight = tf.stack([1.0 - frac, frac], axis=-1) * tf.cast(inside, tf.float32)[..., None]
    index = tf.clip_by_value(index, 0, size - 1)  # already in range for finite input
    flat = tf.concat([tf.shape(index)[:-3], [pooled * sampling_ratio * 2]], axis=0)
    return tf.reshape(index, flat), tf.reshape(weight, flat)


def roi_align(features, rois_yxyx_px, valid=None, output_size=7, spatial_scale=1.0 / 16.0, sampling_ratio=2,
              aligned=False):
    """RoIAlign as torchvision's `ops.roi_align` computes it (`csrc/ops/cpu/roi_align_kernel.cpp`;
    He et al., Mask R-CNN).

    Per RoI: scaled coordinates (minus 0.5 when `aligned`); extent end - start, at least 1 cell
    when not `aligned`; each of the P x P bins averages a g x g grid (g = sampling_ratio) of
    bilinear samples at start + (p + (i + 0.5) / g) * bin; a sample with y < -1, y > H, x < -1 or
    x > W contributes 0, others are clamped into the map (a coordinate <= 0 reads row 0, one past
    H - 1 reads row H - 1).

    The bin size is extent * (1 / P) where torchvision divides by P: XLA and the TFLite
    converter turn a division by a constant into that multiplication anyway, so writing it keeps
    TensorFlow and TFLite bit-equal. It moves a sample by up to an ulp of its coordinate from
    torchvision's (3.8e-6 cells at x ~ 40), which moves the output by that times the map's
    local slope: 1.2e-5 at most on the fixture, within its tolerance of 2e-5. Under XLA the
    sample arithmetic may also be fused into multiply-adds: ulps again, 4e-6 on the fixture.

    sampling_ratio must be a positive int: torchvision's adaptive grid (<= 0: ceil(extent / P)
    samples per bin) has a data-dependent size, which fixed-shape XLA and TFLite graphs cannot
    have.

    Memory and compute: bilinear sampling is separable and so is the sample grid, so per RoI the
    samples read the lattice of 2g P rows x 2g P columns (each sample row's two neighbours times
    each sample column's): one gather of B R (2gP)^2 C floats (784 C per RoI for P = 7, g = 2:
    0.48 GB at R = 300, C = 512; 0.2 GB at 128), then
    two weighted sums (columns, then rows), B R (2gP)^2 C and B R 2gP^2 C multiply-adds (eager
    holds the gather and its column weighting at once; XLA fuses them).

    Args: see the module docstring; output_size: P (int or pair); spatial_scale: feature cells
      per input pixel; sampling_ratio: g; aligned: the half-pixel correction of Detectron2 /
      torchvision (False: Mask R-CNN's original, and the Faster R-CNN reference).
    Returns: [B, R, Ph, Pw, C].
    """
    features, rois, valid = _check_inputs(features, rois_yxyx_px, valid)
    pooled_h, pooled_w = _pair(output_size)
    sampling_ratio = int(sampling_ratio)
    if sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be a positive int (no adaptive grid), got {sampling_ratio}")
    _, height, width, depth = features.shape
    batch = tf.shape(features)[0]
    num_rois = tf.shape(rois)[1]
    dtype = features.dtype

    offset = 0.5 if aligned else 0.0
    scaled = tf.clip_by_value(rois * tf.constant(spatial_scale, tf.float32), -_COORD_LIMIT, _COORD_LIMIT) - offset
    scaled = tf.reshape(scaled, [-1, 4])  # [N = B R, 4]
    y_index, y_weight = _align_axis(scaled[:, 0], scaled[:, 2], pooled_h, sampling_ratio, height, aligned)
    x_index, x_weight = _align_axis(scaled[:, 1], scaled[:, 3], pooled_w, sampling_ratio, width, aligned)
    ey, ex = 2 * sampling_ratio * pooled_h, 2 * sampling_ratio * pooled_w
    y_weight = y_weight * tf.cast(tf.reshape(valid, [-1, 1]), tf.float32)

    image = tf.repeat(tf.range(batch, dtype=tf.int32), num_rois)[:, None, None]  # [N, 1, 1]
    index = (image * height + y_index[:, :, None]) * width + x_index[:, None, :]  # [N, Ey, Ex]
    lattice = tf.gather(tf.reshape(features, [-1, depth]), tf.reshape(index, [-1]))
    lattice = tf.reshape(lattice, [-1, ey, ex, depth]) * tf.cast(x_weight, dtype)[:, None, :, None]
    # Columns: each bin's 2g samples x 2 neighbours.
    lattice = tf.reduce_sum(tf.reshape(lattice, [-1, ex // pooled_w, depth]), axis=1)  # [N Ey Pw, C]
    lattice = tf.reshape(lattice, [-1, pooled_h, ey // pooled_h, pooled_w * depth])
    rows = tf.reshape(tf.cast(y_weight, dtype), [-1, pooled_h, ey // pooled_h, 1])
    pooled = tf.reduce_sum(lattice * rows, axis=2) * tf.cast(1.0 / sampling_ratio**2, dtype)
    return tf.reshape(pooled, tf.stack([batch, num_rois, pooled_h, pooled_w, depth]))
