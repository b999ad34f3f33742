"""RefineDet's heads: ARM, TCB and ODM (paper Fig. 1 and 2; Caffe
model_libs.py CreateRefineDetHead; RefineDet.PyTorch models/refinedet.py).

Each head flattens its per-level outputs in the reference order (level, row, column, anchor)
so that output row i pairs with anchor i of `anchors.generate_anchors`.
"""

import keras


def _predict(features, anchors_per_location, values, name):
    """3x3 conv predicting `values` numbers per anchor; [B, H, W, k*values] -> [B, H*W*k, values].

    Channels are anchor-major (channel = anchor * values + value), as in the reference.
    """
    x = keras.layers.Conv2D(anchors_per_location * values, 3, padding="same", name=name)(features)
    return keras.layers.Reshape((-1, values), name=f"{name}_flat")(x)


def _concat(outputs, name):
    # float32 so that losses and decoding stay in float32 under mixed precision.
    return keras.layers.Concatenate(axis=1, name=name, dtype="float32")(outputs)


def anchor_refinement_module(sources, anchors_per_location):
    """ARM: per source, (ty, tx, th, tw) offsets that refine each anchor and its 2-way objectness.

    Returns:
      arm_loc [B, A, 4], arm_conf [B, A, 2] (logits; index 1 = object).
    """
    loc = [_predict(x, anchors_per_location, 4, f"arm_loc_{i}") for i, x in enumerate(sources)]
    conf = [_predict(x, anchors_per_location, 2, f"arm_conf_{i}") for i, x in enumerate(sources)]
    return _concat(loc, "arm_loc"), _concat(conf, "arm_conf")


def _tcb_conv(x, channels, name, batch_norm, relu=True, upsample=False):
    """conv3x3 (or deconv 2x2/2 with `upsample`) [-> BN] [-> ReLU]; with BN the conv has no bias
    (BN's beta replaces it)."""
    if upsample:
        conv = keras.layers.Conv2DTranspose(channels, 2, strides=2, use_bias=not batch_norm, name=name)
    else:
        conv = keras.layers.Conv2D(channels, 3, padding="same", use_bias=not batch_norm,
                                   activation="relu" if relu and not batch_norm else None, name=name)
    x = conv(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        if relu:
            x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def transfer_connection_blocks(sources, channels=256, batch_norm=False):
    """TCB, top-down from the deepest level: each level's features plus the upsampled level above.

    Per level l: conv3x3 -> ReLU -> conv3x3, (+ deconv 2x2/2 of level l+1's output), ReLU,
    conv3x3, ReLU. `batch_norm` puts a BatchNormalization after every conv and deconv (before
    the ReLU and the sum), as MobileNet detectors do in their heads.
    Returns:
      list of 4 maps [B, H_l, W_l, channels], stride 8 first.
    """
    outputs = [None] * len(sources)
    above = None
    for level in reversed(range(len(sources))):
        x = _tcb_conv(sources[level], channels, f"tcb_{level}_conv1", batch_norm)
        x = _tcb_conv(x, channels, f"tcb_{level}_conv2", batch_norm, relu=False)
        if above is not None:
            up = _tcb_conv(above, channels, f"tcb_{level}_up", batch_norm, relu=False, upsample=True)
            x = keras.layers.Add(name=f"tcb_{level}_add")([x, up])
        x = keras.layers.ReLU(name=f"tcb_{level}_relu")(x)
        x = _tcb_conv(x, channels, f"tcb_{level}_conv3", batch_norm)
        outputs[level] = above = x
    return outputs


def object_detection_module(tcb_features, anchors_per_location, num_classes):
    """ODM: per TCB map, offsets relative to the refined anchors and class logits.

    Returns:
      odm_loc [B, A, 4], odm_conf [B, A, num_classes] (logits; class 0 = background).
    """
    loc = [_predict(x, anchors_per_location, 4, f"odm_loc_{i}") for i, x in enumerate(tcb_features)]
    conf = [_predict(x, anchors_per_location, num_classes, f"odm_conf_{i}")
            for i, x in enumerate(tcb_features)]
    return _concat(loc, "odm_loc"), _concat(conf, "odm_conf")
