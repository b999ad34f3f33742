"""Loading the RefineDet.PyTorch fixtures (copied from shared/reference/golden) in our formats.

The reference is x-first (xyxy boxes, (tx, ty, tw, th) offsets); the library is y-first.
Swapping columns 0<->1 and 2<->3 converts both ways.
"""

import os

import numpy as np

import refinedet_tf

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden")


def load(name):
    with np.load(os.path.join(GOLDEN, f"{name}.npz")) as data:
        return {k: data[k] for k in data.files}


def swap_xy(values):
    """xyxy <-> yxyx, (tx, ty, tw, th) <-> (ty, tx, th, tw)."""
    return np.asarray(values)[..., [1, 0, 3, 2]]


def reference_config(**overrides):
    """vgg16_320 as RefineDet.PyTorch runs it: clipped priors."""
    return refinedet_tf.get_preset("vgg16_320", clip_anchors=True, **overrides)


def ground_truth(fixture):
    """gt_boxes_labels [B, G, 5] (xyxy, 0-based label, -1 padding) -> boxes, classes, mask."""
    gbl = fixture["gt_boxes_labels"]
    mask = gbl[..., 4] >= 0
    classes = np.where(mask, gbl[..., 4] + 1, 0).astype(np.int32)
    return swap_xy(gbl[..., :4]).astype(np.float32), classes, mask


def head_outputs(fixture):
    return {
        "arm_loc": swap_xy(fixture["arm_loc"]), "arm_conf": fixture["arm_conf"],
        "odm_loc": swap_xy(fixture["odm_loc"]), "odm_conf": fixture["odm_conf"],
    }
