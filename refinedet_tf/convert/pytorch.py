"""Imports RefineDet.PyTorch (luuuyi/RefineDet.PyTorch) VGG16 checkpoints into our Keras model.

Usage:
  python -m refinedet_tf.convert.pytorch --checkpoint RefineDet320_VOC_final.pth \
      --preset vgg16_320 --output refinedet320_voc.weights.h5

No other TensorFlow library reads these trained weights; importing them gives the paper's VOC
numbers without a day of training. Layouts: PyTorch Conv2d [out, in, kh, kw] -> Keras
[kh, kw, in, out]; ConvTranspose2d [in, out, kh, kw] -> Keras [kh, kw, out, in]; location head
channels are reordered from the reference's (tx, ty, tw, th) to our (ty, tx, th, tw).
"""

import os

import numpy as np
from absl import app, flags

from refinedet_tf.config import get_preset
from refinedet_tf.model import build_refinedet

_VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG_NAMES = tuple(f"block{b}_conv{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                   for i in range(1, n + 1))
# Per anchor, our channel j takes the reference's channel _LOC_ORDER[j].
_LOC_ORDER = (1, 0, 3, 2)


def _vgg16_layer_map(num_levels=4):
    """{our layer name: (reference prefix, kind)} for the VGG16 RefineDet."""
    mapping = {name: (f"vgg.{i}", "conv") for name, i in zip(_VGG_NAMES, _VGG_CONVS)}
    mapping.update({
        "fc6": ("vgg.31", "conv"), "fc7": ("vgg.33", "conv"),
        "conv4_3_l2norm": ("conv4_3_L2Norm", "scale"), "conv5_3_l2norm": ("conv5_3_L2Norm", "scale"),
        "conv6_1": ("extras.0", "conv"), "conv6_2": ("extras.1", "conv"),
    })
    for level in range(num_levels):
        mapping[f"arm_loc_{level}"] = (f"arm_loc.{level}", "loc")
        mapping[f"arm_conf_{level}"] = (f"arm_conf.{level}", "conv")
        mapping[f"odm_loc_{level}"] = (f"odm_loc.{level}", "loc")
        mapping[f"odm_conf_{level}"] = (f"odm_conf.{level}", "conv")
        mapping[f"tcb_{level}_conv1"] = (f"tcb0.{3 * level}", "conv")
        mapping[f"tcb_{level}_conv2"] = (f"tcb0.{3 * level + 2}", "conv")
        mapping[f"tcb_{level}_conv3"] = (f"tcb2.{3 * level + 1}", "conv")
        if level < num_levels - 1:
            mapping[f"tcb_{level}_up"] = (f"tcb1.{level}", "deconv")
    return mapping


def _reorder_loc(values, axis):
    """Per-anchor (x, y, w, h) -> (y, x, h, w) along `axis` (length anchors * 4)."""
    n = values.shape[axis]
    index = np.arange(n).reshape(-1, 4)[:, list(_LOC_ORDER)].reshape(-1)
    return np.take(values, index, axis=axis)


def _convert(weights, bias, kind):
    if kind == "scale":
        return [weights]
    if kind == "deconv":
        return [weights.transpose(2, 3, 1, 0), bias]
    kernel = weights.transpose(2, 3, 1, 0)
    if kind == "loc":
        return [_reorder_loc(kernel, axis=3), _reorder_loc(bias, axis=0)]
    return [kernel, bias]


def strip_data_parallel_prefix(state_dict):
    """Checkpoints saved from nn.DataParallel prefix every key with 'module.'."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def load_pytorch_state_dict(model, state_dict):
    """Copies a RefineDet.PyTorch VGG16 state dict into a model from `build_refinedet`.

    Args:
      model: Keras model of a `vgg16_*` preset with the checkpoint's num_classes.
      state_dict: {name: numpy array} with the reference's keys ('vgg.0.weight', ...); values
        may also be torch tensors.
    Raises:
      ValueError naming every missing key, unused key or shape mismatch.
    """
    state = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, np.float32)
             for k, v in strip_data_parallel_prefix(state_dict).items()}
    used = set()
    problems = []
    assignments = []
    for layer_name, (prefix, kind) in _vgg16_layer_map().items():
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            problems.append(f"model has no layer {layer_name!r} (is it a vgg16 preset?)")
            continue
        keys = [f"{prefix}.weight"] + ([] if kind == "scale" else [f"{prefix}.bias"])
        missing = [k for k in keys if k not in state]
        if missing:
            problems.append(f"state dict lacks {missing}")
            continue
        used.update(keys)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        try:
            values = _convert(state[keys[0]], state[keys[1]] if len(keys) > 1 else None, kind)
            got = [v.shape for v in values]
        except ValueError:  # e.g. a location head whose channels are not a multiple of 4
            got = [state[k].shape for k in keys]
        if expected != got:
            problems.append(f"{layer_name} <- {prefix}: expected shapes {expected}, got {got}")
            continue
        assignments.append((layer, values))
    unused = sorted(set(state) - used)
    if unused:
        problems.append(f"state dict keys not used: {unused}")
    if problems:
        raise ValueError("cannot import the PyTorch state dict:\n  " + "\n  ".join(problems))
    for layer, values in assignments:
        layer.set_weights(values)


def num_classes_of(state_dict):
    """The checkpoint's num_classes (with background), from the first ODM class head."""
    state = strip_data_parallel_prefix(state_dict)
    return int(np.shape(state["odm_conf.0.weight"])[0]) // 3


def read_pth(path):
    """Reads a `.pth` state dict (needs the optional `torch` extra)."""
    try:
        import torch  # noqa: PLC0415  optional extra (refinedet-tf[torch])
    except ImportError as error:
        raise ImportError("reading .pth files needs torch: pip install 'refinedet-tf[torch]'") from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k: v.numpy() for k, v in state.items()}


def read_state_dict(path):
    """A `.pth` (torch) or `.npz` ({name: array}) state dict as numpy arrays."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".npz"):
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    return read_pth(path)


def write_converted(model, config, output):
    """Writes `output` (.weights.h5 appended when missing) and its config beside it as
    `X.config.json` (what checkpoints.load_model reads), and says what it wrote."""
    if not output.endswith(".weights.h5"):
        output += ".weights.h5"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    # Written to a temporary name and renamed, so a crash never leaves half a checkpoint.
    tmp = output[: -len(".weights.h5")] + ".tmp.weights.h5"
    model.save_weights(tmp)
    os.replace(tmp, output)
    with open(output[: -len(".weights.h5")] + ".config.json", "w", encoding="utf-8") as f:
        f.write(config.to_json())
    print(f"wrote {output} ({config.name}, num_classes={config.num_classes}, "
          f"{model.count_params():,} parameters)")


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    state = read_state_dict(FLAGS.checkpoint)
    config = get_preset(FLAGS.preset, num_classes=num_classes_of(state))
    if not config.backbone == "vgg16":
        raise SystemExit(f"only vgg16 presets can be imported, got {FLAGS.preset}")
    model = build_refinedet(config)
    load_pytorch_state_dict(model, state)
    write_converted(model, config, FLAGS.output)


def _define_flags():
    flags.DEFINE_string("checkpoint", None, "RefineDet.PyTorch .pth (or .npz state dict)", required=True)
    flags.DEFINE_string("preset", "vgg16_320", "vgg16_320 or vgg16_512")
    flags.DEFINE_string("output", None, "output Keras weights file (.weights.h5)", required=True)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
