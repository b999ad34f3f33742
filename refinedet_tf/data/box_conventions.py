"""Pixel boxes of the annotation formats <-> the library's normalized [ymin, xmin, ymax, xmax]
(numpy; readers convert in, evaluation writes results back out).

  VOC XML: 1-based inclusive pixel indices. normalized xmin = (xmin - 1) / W, xmax = xmax / W
    (same for y with H), so a box covering the whole image is [1, 1, H, W] -> [0, 0, 1, 1].
  COCO [x, y, w, h]: continuous pixel coordinates. xmin = x / W, xmax = (x + w) / W.
"""

import numpy as np


def voc_pixels_to_normalized(boxes_voc_yxyx, height, width):
    """VOC 1-based inclusive pixel boxes -> normalized boxes.

    Args:
      boxes_voc_yxyx: [..., 4] [ymin, xmin, ymax, xmax] as written in VOC XML.
      height, width: the image size in pixels.
    Returns:
      float32 [..., 4] normalized yxyx: ((ymin - 1) / H, (xmin - 1) / W, ymax / H, xmax / W).
    """
    b = np.asarray(boxes_voc_yxyx, np.float64)
    scale = np.array([height, width, height, width], np.float64)
    shift = np.array([1.0, 1.0, 0.0, 0.0])
    return ((b - shift) / scale).astype(np.float32)


def normalized_to_voc_pixels(boxes_yxyx, height, width):
    """Inverse of `voc_pixels_to_normalized`: float64 [..., 4] (y*H + 1, x*W + 1, y*H, x*W)."""
    b = np.asarray(boxes_yxyx, np.float64)
    scale = np.array([height, width, height, width], np.float64)
    return b * scale + np.array([1.0, 1.0, 0.0, 0.0])


def coco_xywh_to_normalized(boxes_xywh, height, width):
    """COCO [x, y, w, h] continuous pixel boxes -> float32 [..., 4] normalized yxyx."""
    b = np.asarray(boxes_xywh, np.float64)
    x, y, w, h = np.moveaxis(b, -1, 0)
    return np.stack([y / height, x / width, (y + h) / height, (x + w) / width], -1).astype(np.float32)


def normalized_to_coco_xywh(boxes_yxyx, height, width):
    """Inverse of `coco_xywh_to_normalized`: float64 [..., 4] [x, y, w, h] pixels."""
    b = np.asarray(boxes_yxyx, np.float64)
    ymin, xmin, ymax, xmax = np.moveaxis(b, -1, 0)
    return np.stack([xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height], -1)
