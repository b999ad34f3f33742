"""Boxes drawn on images (OpenCV): predict.py's pictures and the validation images TensorBoard
shows during training."""

import colorsys

import cv2
import numpy as np

from refinedet_tf.data.pipeline import image_pixels, valid_sizes
from refinedet_tf.preprocessing import unpreprocess_images


def class_colour(class_id):
    """A distinct, stable RGB colour per class id (golden-ratio steps around the hue circle)."""
    r, g, b = colorsys.hsv_to_rgb((int(class_id) * 0.618033988749895) % 1.0, 0.85, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(image_rgb, boxes_yxyx, colours, labels=None, thickness=None):
    """A copy of `image_rgb` with each box and, when given, its label on a tag of its colour.

    Args:
      image_rgb: uint8 [H, W, 3] RGB.
      boxes_yxyx: [N, 4] normalized boxes; drawn clipped to the image.
      colours: one RGB triple for every box, or a list of N.
      labels: optional list of N strings.
      thickness: line width in pixels (default: 1 per 300 pixels of the shorter side, at least 1).
    Returns:
      uint8 [H, W, 3] RGB.
    """
    canvas = np.array(image_rgb, np.uint8, copy=True)
    h, w = canvas.shape[:2]
    boxes = np.asarray(boxes_yxyx, np.float64).reshape(-1, 4)
    if len(colours) == 3 and np.isscalar(colours[0]):
        colours = [colours] * len(boxes)
    thickness = thickness or max(1, round(min(h, w) / 300))
    scale = 0.4 * thickness
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        colour = tuple(int(c) for c in colours[i])
        x0, x1 = (int(np.clip(round(v * w), 0, w - 1)) for v in (x0, x1))
        y0, y1 = (int(np.clip(round(v * h), 0, h - 1)) for v in (y0, y1))
        cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, thickness)
        if labels is None:
            continue
        (tw, th), base = cv2.getTextSize(labels[i], cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y0 - 2 if y0 - th - base - 2 >= 0 else min(y0 + th + 2, h - 1)  # above the box if it fits
        cv2.rectangle(canvas, (x0, ty - th - 2), (x0 + tw + 2, ty + base), colour, -1)
        cv2.putText(canvas, labels[i], (x0 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return canvas


def draw_ground_truth_and_detections(images, targets, detections, config, class_names, limit,
                                      min_score=0.3):
    """Up to `limit` preprocessed images of a batch with their true (red) and detected (green, score
    >= min_score) boxes, as float32 RGB in [0, 1] (what tf.summary.image takes).

    Args:
      images: a pipeline batch's images (`data.pipeline`): [B, S, S, 3] preprocessed
        (`preprocessing.preprocess_images` of `config`), or the keep_aspect dict.
      targets: dict boxes [B, G, 4] normalized yxyx, mask [B, G].
      detections: the dict of `Architecture.detect`.
    Returns:
      a list of float32 [S, S, 3]: the whole canvas (keep_aspect padding included, so the
      pictures stack), with the boxes, normalized to each image's valid area, drawn on it.
    """
    pixels = np.asarray(unpreprocess_images(image_pixels(images)[:limit], config))
    # Valid area / canvas, per image: maps boxes normalized to the valid area onto the canvas.
    to_canvas = np.tile(np.asarray(valid_sizes(images), np.float64) / pixels.shape[1:3], 2)
    out = []
    for i in range(pixels.shape[0]):
        rgb = np.clip(pixels[i], 0, 255).astype(np.uint8)
        valid = np.asarray(targets["mask"][i])
        rgb = draw_boxes(rgb, np.asarray(targets["boxes"][i])[valid] * to_canvas[i], (255, 0, 0))
        n = int(detections["num_detections"][i])
        scores = np.asarray(detections["detection_scores"][i][:n])
        keep = scores >= min_score
        labels = [f"{class_names[c]} {s:.2f}" for c, s in zip(
            np.asarray(detections["detection_classes"][i][:n])[keep], scores[keep])]
        boxes = np.asarray(detections["detection_boxes"][i][:n])[keep] * to_canvas[i]
        rgb = draw_boxes(rgb, boxes, (0, 255, 0), labels)
        out.append(rgb.astype(np.float32) / 255.0)
    return out
