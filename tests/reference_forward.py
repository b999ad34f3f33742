"""A second, independent forward pass of RefineDet.PyTorch's VGG16 model.

Written from the reference's module lists (vgg / extras / arm / odm / tcb0-2 indices) with raw
`tf.nn` ops that read the state dict in its PyTorch layout. It shares no code with our Keras
model or importer, so agreement between the two checks the importer on any seed and size.
"""

import numpy as np
import tensorflow as tf

_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]


def _conv(x, state, prefix, stride=1, padding=1, dilation=1):
    w = tf.constant(state[f"{prefix}.weight"].transpose(2, 3, 1, 0))
    if padding:
        x = tf.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    y = tf.nn.conv2d(x, w, strides=stride, padding="VALID", dilations=dilation)
    return y + state[f"{prefix}.bias"]


def _l2norm(x, weight):
    return x / (tf.sqrt(tf.reduce_sum(x * x, axis=-1, keepdims=True)) + 1e-10) * weight


def _pool(x, ceil):
    if ceil and x.shape[1] % 2:
        x = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]], constant_values=-np.inf)
    return tf.nn.max_pool2d(x, 2, 2, "VALID")


def _deconv(x, state, prefix):
    w = state[f"{prefix}.weight"]  # [in, out, 2, 2], stride 2: each input pixel paints a 2x2 block
    y = tf.einsum("bhwi,iokl->bhkwlo", x, w)
    b, h, _, wd, _, o = y.shape
    return tf.reshape(y, [b, h * 2, wd * 2, o]) + state[f"{prefix}.bias"]


def _flatten(x, values):
    return tf.reshape(x, [x.shape[0], -1, values])


def reference_forward(state, images_nhwc, num_classes):
    """Returns the four head outputs (x-first loc, as the reference) and the ARM sources."""
    x = tf.constant(images_nhwc)
    sources = []
    index = 0
    conv_count = 0
    for v in _VGG_CFG:
        if v in ("M", "C"):
            x = _pool(x, ceil=v == "C")
            index += 1
            continue
        x = tf.nn.relu(_conv(x, state, f"vgg.{index}"))
        index += 2
        conv_count += 1
        if conv_count == 10:
            sources.append(_l2norm(x, state["conv4_3_L2Norm.weight"]))
    sources.append(_l2norm(x, state["conv5_3_L2Norm.weight"]))
    x = tf.nn.max_pool2d(x, 2, 2, "VALID")
    x = tf.nn.relu(_conv(x, state, "vgg.31", padding=3, dilation=3))
    x = tf.nn.relu(_conv(x, state, "vgg.33", padding=0))
    sources.append(x)
    x = tf.nn.relu(_conv(x, state, "extras.0", padding=0))
    x = tf.nn.relu(_conv(x, state, "extras.1", stride=2))
    sources.append(x)
    arm_loc = tf.concat([_flatten(_conv(s, state, f"arm_loc.{i}"), 4) for i, s in enumerate(sources)], 1)
    arm_conf = tf.concat([_flatten(_conv(s, state, f"arm_conf.{i}"), 2) for i, s in enumerate(sources)], 1)
    tcb = [None] * 4
    p = None
    for k, s in enumerate(sources[::-1]):
        level = 3 - k
        s = _conv(tf.nn.relu(_conv(s, state, f"tcb0.{level * 3}")), state, f"tcb0.{level * 3 + 2}")
        if k:
            s = s + _deconv(p, state, f"tcb1.{level}")
        s = tf.nn.relu(_conv(tf.nn.relu(s), state, f"tcb2.{level * 3 + 1}"))
        tcb[level] = p = s
    odm_loc = tf.concat([_flatten(_conv(s, state, f"odm_loc.{i}"), 4) for i, s in enumerate(tcb)], 1)
    odm_conf = tf.concat([_flatten(_conv(s, state, f"odm_conf.{i}"), num_classes) for i, s in enumerate(tcb)], 1)
    return {"arm_loc": arm_loc.numpy(), "arm_conf": arm_conf.numpy(), "odm_loc": odm_loc.numpy(),
            "odm_conf": odm_conf.numpy()}, [s.numpy() for s in sources], [t.numpy() for t in tcb]
