"""Precise BatchNorm statistics (detectron2's PreciseBN): recompute the moving mean and variance
of every BatchNormalization layer as the average over a number of batches, with the weights as
they are now.

Why: the exponential moving average mixes statistics of many past weights. While a network
trained from scratch changes quickly (the CPU demo), that average is stale and inference-mode
detections collapse (VOC07 mAP 0.001 where the same weights give 0.22 with recomputed
statistics). Evaluations during training call this first; long fine-tuning runs from ImageNet
weights are barely affected.
"""

import itertools

import numpy as np

from refinedet_tf.layers import batch_norm_layers


def recompute_batch_norm_statistics(model, images_batches, num_batches=20):
    """Sets each BN layer's moving statistics to their mean over `num_batches` batches.

    Args:
      model: a Keras model (its BN layers are found recursively).
      images_batches: iterable of preprocessed image batches [B, S, S, 3] (e.g. un-augmented
        training images); no more than `num_batches` are taken from it.
    Returns:
      the number of batches used (0 when the model has no BatchNorm). When the batches raise,
      every layer's statistics and momentum are put back as they were.
    """
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    before = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]
    sums = [(np.zeros(layer.moving_mean.shape), np.zeros(layer.moving_variance.shape)) for layer in layers]
    used = 0
    try:
        for layer in layers:
            layer.momentum = 0.0  # each forward pass writes exactly its batch's statistics
        for images in itertools.islice(images_batches, num_batches):
            model(images, training=True)
            for (mean_sum, var_sum), layer in zip(sums, layers):
                mean_sum += layer.moving_mean.numpy()
                var_sum += layer.moving_variance.numpy()
            used += 1
    except BaseException:
        for layer, (mean, variance) in zip(layers, before):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
        raise
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    sources = [(m / used, v / used) for m, v in sums] if used else before
    for (mean, variance), layer in zip(sources, layers):
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
    return used
