"""faster_rcnn/roi_pooling.py: RoIPool exactly as torchvision / Caffe, RoIAlign as torchvision,
in graphs that compile with XLA and convert to TFLite built-ins.

Fixture: tests/data/golden_frcnn/roi_pool.npz (a byte-for-byte copy of the reference fixture;
README section "roi_pool.npz"): torchvision's RoIPool((7, 7), 1/16) and roi_align (sampling
ratio 2, aligned False and True) on one 8-channel 38 x 50 map and 20 RoIs. The reference is NCHW;
ours is NHWC with RoIs [B, R, 4] yxyx in pixels.
"""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf.faster_rcnn.roi_pooling import c_round, roi_align, roi_pool, roi_pool_bins

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden_frcnn")
SCALE = 1.0 / 16.0


def load_fixture():
    with np.load(os.path.join(GOLDEN, "roi_pool.npz")) as data:
        return {k: data[k] for k in data.files}


def fixture_inputs(f):
    """features [1, H, W, C], rois [1, R, 4]."""
    return f["feature"].transpose(0, 2, 3, 1), f["rois"][None]


def to_reference_layout(pooled):
    """[1, R, 7, 7, C] -> the reference's [R, C, 7, 7]."""
    return np.asarray(pooled)[0].transpose(0, 3, 1, 2)


# ---- Independent numpy versions of torchvision's CPU kernels (loops, float32 as in C++).


def reference_roi_pool(features, rois, pooled=(7, 7), scale=SCALE):
    """features [H, W, C] of one image, rois [R, 4] yxyx px -> [R, Ph, Pw, C]."""
    height, width, depth = features.shape
    out = np.zeros((len(rois), *pooled, depth), np.float32)

    def c_round_exact(v):  # float32 value, rounded half away from zero (exact in float64)
        v = float(v)
        return int(math.copysign(math.floor(abs(v) + 0.5), v))

    for r, roi in enumerate(np.asarray(rois, np.float32)):
        y1, x1, y2, x2 = (c_round_exact(v * np.float32(scale)) for v in roi)
        n_h, n_w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        bin_h, bin_w = np.float32(n_h) / np.float32(pooled[0]), np.float32(n_w) / np.float32(pooled[1])
        for ph in range(pooled[0]):
            h0 = min(max(int(np.floor(np.float32(ph) * bin_h)) + y1, 0), height)
            h1 = min(max(int(np.ceil(np.float32(ph + 1) * bin_h)) + y1, 0), height)
            for pw in range(pooled[1]):
                w0 = min(max(int(np.floor(np.float32(pw) * bin_w)) + x1, 0), width)
                w1 = min(max(int(np.ceil(np.float32(pw + 1) * bin_w)) + x1, 0), width)
                if h1 > h0 and w1 > w0:
                    out[r, ph, pw] = features[h0:h1, w0:w1].max(axis=(0, 1))
    return out


def reference_roi_align(features, rois, pooled=7, scale=SCALE, sampling_ratio=2, aligned=False):
    """torchvision's roi_align forward, loops in float32. features [H, W, C], rois [R, 4] yxyx px."""
    f32 = np.float32
    height, width, depth = features.shape
    out = np.zeros((len(rois), pooled, pooled, depth), np.float32)
    offset = f32(0.5 if aligned else 0.0)
    g = sampling_ratio
    for r, roi in enumerate(np.asarray(rois, np.float32)):
        y1, x1, y2, x2 = (v * f32(scale) - offset for v in roi)
        roi_h, roi_w = y2 - y1, x2 - x1
        if not aligned:
            roi_h, roi_w = max(roi_h, f32(1)), max(roi_w, f32(1))
        bin_h, bin_w = roi_h / f32(pooled), roi_w / f32(pooled)
        for ph in range(pooled):
            for pw in range(pooled):
                acc = np.zeros(depth, np.float32)
                for iy in range(g):
                    y = y1 + f32(ph) * bin_h + f32(iy + 0.5) * bin_h / f32(g)
                    for ix in range(g):
                        x = x1 + f32(pw) * bin_w + f32(ix + 0.5) * bin_w / f32(g)
                        if y < -1.0 or y > height or x < -1.0 or x > width:
                            continue
                        yy, xx = max(y, f32(0)), max(x, f32(0))
                        y_lo, x_lo = int(yy), int(xx)
                        if y_lo >= height - 1:
                            y_lo = y_hi = height - 1
                            yy = f32(y_lo)
                        else:
                            y_hi = y_lo + 1
                        if x_lo >= width - 1:
                            x_lo = x_hi = width - 1
                            xx = f32(x_lo)
                        else:
                            x_hi = x_lo + 1
                        ly, lx = yy - f32(y_lo), xx - f32(x_lo)
                        hy, hx = f32(1) - ly, f32(1) - lx
                        acc += (hy * hx * features[y_lo, x_lo] + hy * lx * features[y_lo, x_hi]
                                + ly * hx * features[y_hi, x_lo] + ly * lx * features[y_hi, x_hi])
                out[r, ph, pw] = acc / f32(g * g)
    return out


def random_rois(rng, count, height_px, width_px, margin=200.0, max_size=None):
    """yxyx px, some crossing or outside the borders, some tiny, some larger than the image."""
    max_size = max_size or max(height_px, width_px) * 1.5
    y = rng.uniform(-margin, height_px + margin, count)
    x = rng.uniform(-margin, width_px + margin, count)
    h = rng.uniform(0.0, max_size, count) * rng.choice([0.02, 0.3, 1.0], count)
    w = rng.uniform(0.0, max_size, count) * rng.choice([0.02, 0.3, 1.0], count)
    return np.stack([y, x, y + h, x + w], axis=-1).astype(np.float32)


# ---- The fixture.


def test_roi_pool_equals_torchvision_exactly():
    f = load_fixture()
    features, rois = fixture_inputs(f)
    pooled = to_reference_layout(roi_pool(features, rois, output_size=7, spatial_scale=float(f["spatial_scale"])))
    np.testing.assert_array_equal(pooled, f["roi_pool"])
    assert (pooled == 0).all(axis=1).sum() == 65  # the README's empty bins, all 0


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_equals_torchvision(aligned):
    f = load_fixture()
    features, rois = fixture_inputs(f)
    pooled = roi_align(features, rois, output_size=7, spatial_scale=float(f["spatial_scale"]),
                       sampling_ratio=int(f["sampling_ratio"]), aligned=aligned)
    expected = f["roi_align_aligned_true" if aligned else "roi_align_aligned_false"]
    np.testing.assert_allclose(to_reference_layout(pooled), expected, rtol=0, atol=2e-5)
    # The numpy loops below are torchvision's kernel: they reproduce the fixture too, so the
    # random cases that use them test against the reference's algorithm.
    mine = reference_roi_align(features[0], rois[0], aligned=aligned).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(mine, expected, rtol=0, atol=2e-6)


def test_numpy_roi_pool_reproduces_the_fixture():
    f = load_fixture()
    features, rois = fixture_inputs(f)
    np.testing.assert_array_equal(reference_roi_pool(features[0], rois[0]).transpose(0, 3, 1, 2), f["roi_pool"])


# ---- Hand-checked cases.


def test_c_round_is_half_away_from_zero_for_every_float():
    values = np.array([-0.5, 0.5, 1.5, 2.5, -2.5, 0.49999997, -0.49999997, 2.4999998, 8388609.0, -1e9, 0.0],
                      np.float32)
    expected = np.array([-1, 1, 2, 3, -3, 0, 0, 2, 8388609, -1e9, 0], np.float32)
    np.testing.assert_array_equal(c_round(tf.constant(values)).numpy(), expected)
    # What the two usual spellings give instead: tf.round is half to even, floor(x + 0.5) rounds
    # 0.49999997 + 0.5 up to 1 in float32.
    assert tf.round(2.5).numpy() == 2.0
    assert np.floor(np.float32(0.49999997) + np.float32(0.5)) == 1.0


def test_one_cell_roi_fills_every_bin_with_that_cell():
    features = np.random.default_rng(0).normal(size=(1, 4, 5, 3)).astype(np.float32)
    rois = np.array([[[17.0, 20.0, 22.0, 23.0]]], np.float32)  # 1.06..1.38 x 1.25..1.44 cells: cell (1, 1)
    pooled = roi_pool(features, rois).numpy()
    np.testing.assert_array_equal(pooled[0, 0], np.broadcast_to(features[0, 1, 1], (7, 7, 3)))


def test_empty_bins_are_zero():
    """Rows 2..8 on a 4-row map: n = 7 one-row bins, rows 4..8 are off the map: those bins are
    empty and give 0, not the (negative) max of anything."""
    features = -1.0 - np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    rois = np.array([[[32.0, 0.0, 128.0, 48.0]]], np.float32)  # cells 2..8 x 0..3
    pooled = roi_pool(features, rois).numpy()[0, 0, :, :, 0]
    np.testing.assert_array_equal(pooled[2:], 0.0)
    # Columns: n = 4, bins [0,1) [0,2) [1,2) [1,3) [2,3) [2,4) [3,4).
    cols = [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 4), (3, 4)]
    for ph, row in enumerate((2, 3)):
        np.testing.assert_array_equal(pooled[ph], [features[0, row, a:b, 0].max() for a, b in cols])


def test_negative_coordinates_round_away_from_zero():
    """y_min = -8 px = -0.5 cells: C's round gives -1 (tf.round: 0). With y_max = 88 px (5.5 ->
    6) the RoI has 8 cells, bins [-1,1) [0,2) [1,3) .. [5,7), clipped at 0; on a map that falls
    with the row the maxima are rows 0, 0, 1, 2, 3, 4, 5 (half to even: 7 cells, rows 0..6)."""
    features = -np.broadcast_to(np.arange(8, dtype=np.float32)[:, None], (8, 3)).reshape(1, 8, 3, 1)
    rois = np.array([[[-8.0, 0.0, 88.0, 16.0]]], np.float32)
    pooled = roi_pool(features, rois).numpy()[0, 0, :, :, 0]
    expected = -np.array([0, 0, 1, 2, 3, 4, 5], np.float32)[:, None]
    np.testing.assert_array_equal(pooled, np.broadcast_to(expected, (7, 7)))


def test_the_last_bin_edge_follows_the_reference_float32():
    """A 57-cell RoI: float32 ceil(7 * (57 / 7)) = 58, so torchvision's last bin takes cell 57
    too (exact arithmetic would stop at 56); the same for 114 and 121 cells."""
    features = np.zeros((1, 1, 130, 1), np.float32)
    features[0, 0, 57] = 5.0
    features[0, 0, 114] = 6.0
    features[0, 0, 121] = 7.0
    rois = np.array([[[0.0, 0.0, 0.0, 56 * 16.0], [0.0, 0.0, 0.0, 113 * 16.0], [0.0, 0.0, 0.0, 120 * 16.0],
                      [0.0, 0.0, 0.0, 55 * 16.0]]], np.float32)
    pooled = roi_pool(features, rois).numpy()[0, :, 0, :, 0]
    np.testing.assert_array_equal(pooled[:, -1], [5.0, 6.0, 7.0, 0.0])
    np.testing.assert_array_equal(pooled, reference_roi_pool(features[0], rois[0])[:, 0, :, 0])


def test_integer_bin_edges_equal_the_reference_float32_edges():
    """floor(k n / P) and ceil(k n / P) with the float32 excess of the last edge: the edges of
    `bin = float32(n) / P` for every RoI size the clamp allows (n <= 2^20 + 1) with P = 7, and
    n < 2^16 for the other sizes up to 13."""
    for pooled, limit in [(7, 2**20 + 2)] + [(p, 2**16) for p in (1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13)]:
        n = np.arange(1, limit, dtype=np.int64)
        bin_size = n.astype(np.float32) / np.float32(pooled)
        edges = np.arange(pooled + 1, dtype=np.float32)
        lo, hi = roi_pool_bins(tf.zeros(len(n), tf.int32), tf.constant(n - 1, tf.int32), pooled, 2**30)
        np.testing.assert_array_equal(lo.numpy(), np.floor(edges[None, :-1] * bin_size[:, None]), err_msg=pooled)
        np.testing.assert_array_equal(hi.numpy(), np.ceil(edges[None, 1:] * bin_size[:, None]), err_msg=pooled)


# ---- Against the numpy kernels: random RoIs, other map sizes, batches and padding.


@pytest.mark.parametrize("height,width,output_size", [(38, 50, 7), (13, 21, 7), (1, 9, 7), (16, 16, (3, 5))])
def test_roi_pool_random_rois_equal_the_reference_kernel(height, width, output_size):
    rng = np.random.default_rng(height * 100 + width)
    features = rng.normal(size=(1, height, width, 4)).astype(np.float32)
    rois = random_rois(rng, 150, height * 16.0, width * 16.0)
    pooled = roi_pool(features, rois[None], output_size=output_size).numpy()
    size = (output_size, output_size) if isinstance(output_size, int) else output_size
    np.testing.assert_array_equal(pooled[0], reference_roi_pool(features[0], rois, pooled=size))


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_random_rois_equal_the_reference_kernel(aligned):
    rng = np.random.default_rng(11)
    features = rng.normal(size=(1, 13, 21, 3)).astype(np.float32)
    rois = random_rois(rng, 60, 13 * 16.0, 21 * 16.0)
    rois[0] = [-48.0, -48.0, -16.0, 40.0]  # above the map: samples below y = -1 give 0
    rois[1] = [-32.0, 0.0, 0.0, 64.0]  # partly in [-1, 0]: clamped to row 0
    pooled = roi_align(features, rois[None], aligned=aligned).numpy()
    np.testing.assert_allclose(pooled[0], reference_roi_align(features[0], rois, aligned=aligned), rtol=0, atol=2e-5)


def test_roi_align_of_a_linear_map_is_the_value_at_the_bin_centre():
    """Bilinear sampling reproduces a linear function, and a 2 x 2 grid averages to the bin
    centre: aligned=True RoI (1, 1)..(5, 8) cells -> centres 0.5 + (p + 0.5) * extent / 7."""
    height, width = 9, 12
    y, x = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    features = (3.0 * y + x)[None, :, :, None]
    rois = np.array([[[16.0, 16.0, 80.0, 128.0]]], np.float32)
    pooled = roi_align(features, rois, aligned=True).numpy()[0, 0, :, :, 0]
    cy = 0.5 + (np.arange(7) + 0.5) * 4.0 / 7.0
    cx = 0.5 + (np.arange(7) + 0.5) * 7.0 / 7.0
    np.testing.assert_allclose(pooled, 3.0 * cy[:, None] + cx[None, :], rtol=0, atol=1e-5)


@pytest.mark.parametrize("op", [roi_pool, roi_align])
def test_batches_and_padding(op):
    """Each image's RoIs pool its own map; padding rows give 0 whatever they hold (NaN too)."""
    rng = np.random.default_rng(3)
    features = rng.normal(size=(3, 10, 14, 2)).astype(np.float32)
    rois = np.stack([random_rois(rng, 12, 160.0, 224.0) for _ in range(3)])
    valid = rng.uniform(size=(3, 12)) < 0.7
    rois[~valid] = np.nan
    pooled = op(features, rois, valid).numpy()
    for b in range(3):
        alone = op(features[b:b + 1], np.where(valid[b, :, None], rois[b], 0.0)[None]).numpy()[0]
        np.testing.assert_allclose(pooled[b][valid[b]], alone[valid[b]], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(pooled[b][~valid[b]], 0.0)


def test_roi_pool_gradient_goes_to_each_bins_max():
    """d(sum of w * pooled) / d features: each non-empty bin passes its weight to the cell that
    reaches its max (a unique cell on a random map), as the reference's argmax backward."""
    rng = np.random.default_rng(5)
    features = rng.normal(size=(1, 13, 21, 2)).astype(np.float32)
    rois = random_rois(rng, 30, 13 * 16.0, 21 * 16.0)
    upstream = rng.normal(size=(1, 30, 7, 7, 2)).astype(np.float32)
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(roi_pool(x, rois[None]) * upstream)
    grad = tape.gradient(loss, x).numpy()[0]
    maxima = reference_roi_pool(features[0], rois)
    expected = np.zeros_like(features[0])
    for (r, ph, pw, c), value in np.ndenumerate(maxima):
        if value != 0:  # empty bins: no gradient
            (cell,) = np.argwhere(features[0, :, :, c] == value)
            expected[cell[0], cell[1], c] += upstream[0, r, ph, pw, c]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)


# ---- XLA and TFLite.


@pytest.mark.parametrize("aligned", [None, False, True])
def test_compiles_with_xla(aligned):
    """Output and gradient (d sum(w * pooled) / d features) under XLA. RoIPool: bit-equal
    (integer index arithmetic, a max, gathers). RoIAlign: the sample positions are float32
    arithmetic that XLA may fuse differently (multiply-add contraction), which moves a sample by
    an ulp (3.8e-6 cells at x ~ 40), so 1e-5; still within 2e-5 of the reference."""
    f = load_fixture()
    features, rois = fixture_inputs(f)
    upstream = np.random.default_rng(9).normal(size=(1, 20, 7, 7, 8)).astype(np.float32)

    def fn(a, b):
        with tf.GradientTape() as tape:
            tape.watch(a)
            pooled = roi_pool(a, b) if aligned is None else roi_align(a, b, aligned=aligned)
            loss = tf.reduce_sum(pooled * upstream)
        return pooled, tape.gradient(loss, a)

    compiled = [t.numpy() for t in tf.function(fn, jit_compile=True)(tf.constant(features), rois)]
    eager = [t.numpy() for t in fn(tf.constant(features), rois)]
    if aligned is None:
        np.testing.assert_array_equal(compiled[0], eager[0])
        np.testing.assert_array_equal(compiled[1], eager[1])
        np.testing.assert_array_equal(to_reference_layout(compiled[0]), f["roi_pool"])
    else:
        np.testing.assert_allclose(compiled[0], eager[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(compiled[1], eager[1], rtol=0, atol=1e-5)
        expected = f["roi_align_aligned_true" if aligned else "roi_align_aligned_false"]
        np.testing.assert_allclose(to_reference_layout(compiled[0]), expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("aligned", [None, False, True])
def test_converts_to_tflite_builtins_and_runs_the_same(aligned, tmp_path):
    """Conversion restricted to TFLITE_BUILTINS succeeds (no Flex or custom op: no
    CropAndResize), and the interpreter gives TensorFlow's output (RoIPool bit-equal; RoIAlign
    bit-equal here, allowed 1e-6 for other CPUs' kernels)."""
    from refinedet_tf.export.tflite_detector import make_interpreter  # noqa: PLC0415

    f = load_fixture()
    features, rois = fixture_inputs(f)
    valid = np.ones(rois.shape[:2], bool)
    valid[0, 5] = False

    def fn(a, b, c):
        if aligned is None:
            return roi_pool(a, b, c)
        return roi_align(a, b, c, aligned=aligned)

    module = tf.Module()
    module.fn = tf.function(fn, input_signature=[
        tf.TensorSpec(features.shape, tf.float32), tf.TensorSpec(rois.shape, tf.float32),
        tf.TensorSpec(valid.shape, tf.bool)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.fn.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    path = tmp_path / "roi.tflite"
    path.write_bytes(converter.convert())
    runner = make_interpreter(str(path)).get_signature_runner()
    (out,) = runner(a=features, b=rois, c=valid).values()
    expected = fn(features, rois, valid).numpy()
    if aligned is None:
        np.testing.assert_array_equal(out, expected)
    else:
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    assert out.shape == (1, 20, 7, 7, 8)


def test_bad_arguments():
    features = tf.zeros([1, 4, 4, 2])
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(features, tf.zeros([1, 1, 4]), sampling_ratio=0)
    with pytest.raises(ValueError, match=r"rois_yxyx_px \[B, R, 4\]"):
        roi_pool(features, tf.zeros([1, 4]))
    with pytest.raises(ValueError, match="features"):
        roi_pool(tf.zeros([4, 4, 2]), tf.zeros([1, 1, 4]))
