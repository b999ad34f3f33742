"""Imports simple-faster-rcnn-pytorch (chenyuntc) `FasterRCNNVGG16` checkpoints into our Keras
Faster R-CNN.

Usage:
  python -m refinedet_tf.convert.faster_rcnn_pytorch --checkpoint fasterrcnn_12211511_0.701052.pth \
      --output frcnn_vgg16_voc.weights.h5

The checkpoint's 40 state-dict entries (tests/data/golden_frcnn/state_dict_keys_frcnn_vgg16.json):
`extractor.{0,2,5,7,10,12,14,17,19,21,24,26,28}` (VGG16 conv1_1..conv5_3), `rpn.conv1`,
`rpn.score`, `rpn.loc`, `head.classifier.{0,2}` (fc6, fc7), `head.cls_loc`, `head.score`, each
`.weight` and `.bias`. Layouts:
- Conv2d [out, in, kh, kw] -> Keras [kh, kw, in, out].
- RPN channels: the reference's score channel `a * 2 + k` and loc channel `a * 4 + coord`
  (dy, dx, dh, dw) are our layout (faster_rcnn/rpn.py), so the permutations are the identity;
  they are written out (`_RPN_SCORE_ORDER`, `_RPN_LOC_ORDER`) for a reader who compares with
  py-faster-rcnn's class-major `rpn_cls_score`.
- fc6 reads RoIPool's [C, 7, 7] output flattened channel-first (input index c * 49 + y * 7 + x);
  ours flattens NHWC ((y * 7 + x) * C + c): the columns are permuted,
  `W.reshape(4096, C, 7, 7).transpose(2, 3, 1, 0).reshape(49 C, 4096)`.
- Linear [out, in] -> Dense [in, out]; `head.cls_loc` columns class * 4 + (dy, dx, dh, dw), in
  the space divided by (0.1, 0.1, 0.2, 0.2): our bbox_pred's layout and meaning.

The checkpoint's model was trained with centre-8 unrounded anchors and no head dropout: use the
`faster_rcnn_vgg16_sfr` preset. Its pixel means are those of `caffe_pretrain` checkpoints; the
default (torchvision-pretrained) checkpoints normalize RGB / 255 by ImageNet mean and std, which
`preprocessing.preprocess_images` has no mode for.
"""

import os

import numpy as np
from absl import app, flags

from refinedet_tf.convert.pytorch import read_state_dict, strip_data_parallel_prefix, write_converted
from refinedet_tf.faster_rcnn.config import faster_rcnn_preset
from refinedet_tf.faster_rcnn.model import build_faster_rcnn

_VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # indices in torchvision's vgg16.features
_VGG_NAMES = tuple(f"block{b}_conv{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1))
# Per anchor a, our channel j takes the reference's channel a * n + _ORDER[j] (identity: same layout).
_RPN_SCORE_ORDER = (0, 1)  # (background, object)
_RPN_LOC_ORDER = (0, 1, 2, 3)  # (dy, dx, dh, dw)

# (sub-model or None for the top level, our layer, reference prefix, kind)
_LAYER_MAP = (
    *((None, name, f"extractor.{i}", "conv") for name, i in zip(_VGG_NAMES, _VGG_CONVS)),
    ("rpn", "rpn_conv", "rpn.conv1", "conv"),
    ("rpn", "rpn_cls", "rpn.score", "rpn_score"),
    ("rpn", "rpn_bbox", "rpn.loc", "rpn_loc"),
    ("roi_head", "fc6", "head.classifier.0", "fc6"),
    ("roi_head", "fc7", "head.classifier.2", "linear"),
    ("roi_head", "bbox_pred", "head.cls_loc", "linear"),
    ("roi_head", "cls_score", "head.score", "linear"),
)


def _per_anchor(values, order, axis):
    """Reorders channels a * n + j -> a * n + order[j] along `axis` (length anchors * n)."""
    n = len(order)
    if values.shape[axis] % n:
        raise ValueError(f"{values.shape[axis]} channels are not a multiple of {n}")
    index = np.arange(values.shape[axis]).reshape(-1, n)[:, list(order)].reshape(-1)
    return np.take(values, index, axis=axis)


def fc6_kernel_from_pytorch(weight, channels, pooled_size):
    """Linear weight [units, C * P * P] (NCHW-flattened input) -> Dense kernel [P * P * C, units]
    (NHWC-flattened input)."""
    units, inputs = weight.shape
    if inputs != channels * pooled_size * pooled_size:
        raise ValueError(f"fc6 weight has {inputs} inputs, expected C * P * P = {channels} * {pooled_size}^2")
    return weight.reshape(units, channels, pooled_size, pooled_size).transpose(2, 3, 1, 0).reshape(inputs, units)


def _convert(weight, bias, kind, channels, pooled_size):
    if kind == "fc6":
        return [fc6_kernel_from_pytorch(weight, channels, pooled_size), bias]
    if kind == "linear":
        return [weight.T, bias]
    if weight.ndim != 4:
        raise ValueError(f"expected a conv weight [out, in, kh, kw], got {weight.shape}")
    kernel = weight.transpose(2, 3, 1, 0)
    if kind == "rpn_score":
        return [_per_anchor(kernel, _RPN_SCORE_ORDER, 3), _per_anchor(bias, _RPN_SCORE_ORDER, 0)]
    if kind == "rpn_loc":
        return [_per_anchor(kernel, _RPN_LOC_ORDER, 3), _per_anchor(bias, _RPN_LOC_ORDER, 0)]
    return [kernel, bias]


def _layer(model, submodel, name):
    owner = model.get_layer(submodel) if submodel else model
    return owner.get_layer(name)


def load_simple_faster_rcnn_state_dict(model, state_dict):
    """Copies a simple-faster-rcnn-pytorch `FasterRCNNVGG16` state dict into a model from
    `build_faster_rcnn`.

    Args:
      model: Keras model of a vgg16 Faster R-CNN config with the checkpoint's num_classes
        (`head.score.weight` rows) and head_units 4096.
      state_dict: {name: array} with the reference's keys ('extractor.0.weight', ...); values
        may be torch tensors; a 'module.' prefix (nn.DataParallel) is dropped.
    Raises:
      ValueError naming every missing key, unused key and shape mismatch (nothing is assigned
      then).
    """
    state = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, np.float32)
             for k, v in strip_data_parallel_prefix(state_dict).items()}
    used = set()
    problems = []
    assignments = []
    head = _layer(model, None, "roi_head") if any(layer.name == "roi_head" for layer in model.layers) else None
    for submodel, layer_name, prefix, kind in _LAYER_MAP:
        try:
            layer = _layer(model, submodel, layer_name)
        except ValueError:
            where = f"{submodel}/{layer_name}" if submodel else layer_name
            problems.append(f"model has no layer {where!r} (is it a vgg16 Faster R-CNN?)")
            continue
        keys = [f"{prefix}.weight", f"{prefix}.bias"]
        missing = [k for k in keys if k not in state]
        used.update(k for k in keys if k in state)  # recognized, even when its pair is missing
        if missing:
            problems.append(f"state dict lacks {missing}")
            continue
        expected = [tuple(w.shape) for w in layer.weights]
        channels = pooled_size = None
        if kind == "fc6":  # the permutation needs the pooled block's [P, P, C]
            channels = head.inputs[0].shape[-1]
            pooled_size = head.get_layer("roi_pooling").output_size
        try:
            values = _convert(state[keys[0]], state[keys[1]], kind, channels, pooled_size)
            got = [v.shape for v in values]
        except ValueError as error:
            problems.append(f"{layer_name} <- {prefix}: {error} (shapes {[state[k].shape for k in keys]})")
            continue
        if expected != got:
            problems.append(f"{layer_name} <- {prefix}: expected shapes {expected}, got {got} "
                            f"(from {[state[k].shape for k in keys]})")
            continue
        assignments.append((layer, values))
    unused = sorted(set(state) - used)
    if unused:
        problems.append(f"state dict keys not used: {unused}")
    if problems:
        raise ValueError("cannot import the simple-faster-rcnn-pytorch state dict:\n  " + "\n  ".join(problems))
    for layer, values in assignments:
        layer.set_weights(values)


def num_classes_of(state_dict):
    """The checkpoint's num_classes (with background): the rows of `head.score.weight`."""
    state = strip_data_parallel_prefix(state_dict)
    if "head.score.weight" not in state:
        raise ValueError("state dict has no 'head.score.weight': not a simple-faster-rcnn-pytorch FasterRCNNVGG16")
    return int(np.shape(state["head.score.weight"])[0])


def read_checkpoint(path):
    """The model state dict of a simple-faster-rcnn-pytorch checkpoint as numpy arrays.

    `trainer.save` writes {'model': state_dict, 'config': ..., 'other_info': ..., optionally
    'optimizer'}; a bare state dict (.pth) or an `.npz` of {name: array} also work.
    """
    if path.endswith(".npz") or not os.path.exists(path):
        return read_state_dict(path)
    try:
        import torch  # noqa: PLC0415  optional extra (refinedet-tf[torch])
    except ImportError as error:
        raise ImportError("reading .pth files needs torch: pip install 'refinedet-tf[torch]'") from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return {k: v.numpy() for k, v in state.items()}


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    state = read_checkpoint(FLAGS.checkpoint)
    config = faster_rcnn_preset(FLAGS.preset, num_classes=num_classes_of(state))
    if config.backbone != "vgg16":
        raise SystemExit(f"only vgg16 presets can be imported, got {FLAGS.preset}")
    model = build_faster_rcnn(config)
    load_simple_faster_rcnn_state_dict(model, state)
    write_converted(model, config, FLAGS.output)


def _define_flags():
    flags.DEFINE_string("checkpoint", None, "simple-faster-rcnn-pytorch .pth (or .npz state dict)", required=True)
    flags.DEFINE_string("preset", "faster_rcnn_vgg16_sfr", "a vgg16 Faster R-CNN preset")
    flags.DEFINE_string("output", None, "output Keras weights file (.weights.h5)", required=True)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
