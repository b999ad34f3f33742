"""Precise BatchNorm: each BN layer's moving statistics become the plain average, over the first
`num_batches` batches, of its input's per-batch mean and variance (recomputed with the current
weights), and nothing else about the layers changes."""

import keras
import numpy as np
import pytest

from refinedet_tf.training.precise_bn import recompute_batch_norm_statistics

KERNEL = np.array([[1.0, -2.0, 0.5], [0.25, 1.0, 3.0]], np.float32)  # 1x1 conv, 2 -> 3 channels


def _model():
    """images [B, 4, 4, 2] -> bn1 -> 1x1 conv (KERNEL) -> bn2, bn2 inside a nested model (the
    layers must be found recursively)."""
    inputs = keras.Input((4, 4, 2))
    bn1 = keras.layers.BatchNormalization(momentum=0.9, name="bn1")
    head = keras.Sequential([keras.layers.Conv2D(3, 1, use_bias=False, name="conv"),
                             keras.layers.BatchNormalization(momentum=0.99, name="bn2")], name="head")
    model = keras.Model(inputs, head(bn1(inputs)))
    head.get_layer("conv").set_weights([KERNEL[None, None]])
    # Not the defaults, so that bn1's training-mode output really depends on them.
    bn1.gamma.assign([2.0, 0.5])
    bn1.beta.assign([0.25, -1.0])
    # Stale statistics far from the data: they must be replaced, not mixed in.
    for layer in (bn1, head.get_layer("bn2")):
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 100.0))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 50.0))
    return model, bn1, head.get_layer("bn2")


def _batches(count):
    """Batches with different means and spreads, so that which ones are averaged shows."""
    rng = np.random.RandomState(0)
    return [(rng.randn(3, 4, 4, 2) * (k + 1) + 2 * k).astype(np.float32) for k in range(count)]


def _expected_statistics(batches, bn1):
    """numpy: per batch, each BN input's mean and biased variance (Keras 3 BatchNormalization
    uses the biased variance in training mode, for normalizing and for the moving average;
    Caffe and PyTorch keep the unbiased one), averaged over the batches."""
    stats = {"bn1": [], "bn2": []}
    for x in batches:
        x = x.astype(np.float64)
        mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
        stats["bn1"].append((mean, var))
        # bn1 in training mode normalizes with its batch statistics, then the conv mixes channels.
        z = (x - mean) / np.sqrt(var + bn1.epsilon) * bn1.gamma.numpy() + bn1.beta.numpy()
        y = z @ KERNEL
        stats["bn2"].append((y.mean((0, 1, 2)), y.var((0, 1, 2))))
    return {name: np.mean(np.array(per_batch), axis=0) for name, per_batch in stats.items()}


def test_moving_statistics_are_the_average_of_the_first_num_batches():
    model, bn1, bn2 = _model()
    batches = _batches(5)
    stream = iter(batches)
    assert recompute_batch_norm_statistics(model, stream, num_batches=3) == 3
    assert next(stream) is batches[3]  # no batch taken beyond num_batches
    # Batches 3 and 4 have larger means and spreads: had they been used, the values would differ.
    expected = _expected_statistics(batches[:3], bn1)
    for name, layer in (("bn1", bn1), ("bn2", bn2)):
        mean, var = expected[name]
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-5, err_msg=name)
    # Momenta back to their own values; weights other than the statistics untouched.
    assert (bn1.momentum, bn2.momentum) == (0.9, 0.99)
    np.testing.assert_array_equal(bn1.gamma.numpy(), [2.0, 0.5])
    np.testing.assert_array_equal(model.get_layer("head").get_layer("conv").kernel.numpy(), KERNEL[None, None])


def test_fewer_batches_than_asked_uses_them_all():
    model, bn1, _ = _model()
    batches = _batches(2)
    assert recompute_batch_norm_statistics(model, batches, num_batches=20) == 2
    np.testing.assert_allclose(bn1.moving_mean.numpy(), _expected_statistics(batches, bn1)["bn1"][0],
                               rtol=1e-5, atol=1e-5)


def test_no_batch_leaves_the_statistics_alone():
    model, bn1, _ = _model()
    assert recompute_batch_norm_statistics(model, [], num_batches=3) == 0
    np.testing.assert_array_equal(bn1.moving_mean.numpy(), [100.0, 100.0])
    assert bn1.momentum == 0.9


def test_momentum_and_statistics_are_restored_when_the_batches_raise():
    model, bn1, bn2 = _model()

    def failing():
        yield _batches(1)[0]
        raise RuntimeError("input pipeline broke")

    with pytest.raises(RuntimeError, match="input pipeline broke"):
        recompute_batch_norm_statistics(model, failing(), num_batches=3)
    # Momentum 0 left behind would make every later training step overwrite the statistics
    # with one batch's; the first batch's statistics must not stay behind either.
    assert (bn1.momentum, bn2.momentum) == (0.9, 0.99)
    for layer in (bn1, bn2):
        np.testing.assert_array_equal(layer.moving_mean.numpy(), np.full(layer.moving_mean.shape, 100.0))
        np.testing.assert_array_equal(layer.moving_variance.numpy(), np.full(layer.moving_variance.shape, 50.0))


def test_frozen_batch_norm_keeps_its_statistics():
    # Keras 3 runs a non-trainable BatchNormalization in inference mode even under
    # training=True (a frozen backbone, train.py's --freeze_backbone): its statistics stay.
    model, bn1, bn2 = _model()
    bn1.trainable = False
    recompute_batch_norm_statistics(model, _batches(3), num_batches=3)
    np.testing.assert_allclose(bn1.moving_mean.numpy(), [100.0, 100.0])
    np.testing.assert_allclose(bn1.moving_variance.numpy(), [50.0, 50.0])
    assert not np.allclose(bn2.moving_mean.numpy(), 100.0)  # the trainable one was recomputed


def test_model_without_batch_norm_returns_zero():
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    assert recompute_batch_norm_statistics(model, _batches(2), num_batches=2) == 0
