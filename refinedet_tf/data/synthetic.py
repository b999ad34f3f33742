"""A built-in demo dataset: coloured shapes on textured backgrounds, written as a VOC folder.

Six classes (`CLASSES`): filled circle, square, triangle, star, and outlined circle and square.
Each image holds 3-9 objects from ~12 px to ~70% of the image side, with varied colours, mild
aspect changes and rotations, on a gradient + blotches + faint lines + pixel-noise background.
Objects may overlap, but no object is covered by more than ~30% of a later one, so every box
(the tight extent of the object's own pixels, drawn or not) still shows most of its object.

It is made to be learnable: shapes are crisp (anti-aliased, saturated, contrasted against the
local background), so a small detector trained for minutes on a CPU at low resolution reaches
a high VOC07 mAP on `val`; it exercises the full pipeline without downloading anything.
Busy scenes are part of that: 3-9 objects (~6 on average; fewer when no room is left) give
twice the supervision per image of 1-5 for the same compute: the demo's VOC07 mAP after 850
steps went from 0.31 to 0.36, each on its own val split (version 1 had 1-5 objects).

Deterministic: each image's random stream is derived from (seed, split, index), so the same
arguments write byte-identical files (OpenCV's JPEG encoder is deterministic).

    path = ensure_synthetic_dataset()     # ~/.cache/refinedet_tf/synthetic-v2, made on first use
    ds = refinedet_tf.data.read_dataset(path, split="train")
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import cv2
import numpy as np

VERSION = 2
CLASSES = ("circle", "square", "triangle", "star", "circle_outline", "square_outline")
DEFAULTS = dict(num_train=1000, num_val=200, image_size=256, seed=0)
_SPLIT_CODES = {"train": 1, "val": 2}
_OBJECTS_PER_IMAGE = (3, 9)  # inclusive; placements that find no room are dropped
_MAX_COVERED = 0.3  # fraction of an object's box a later object may cover
_MIN_COLOUR_DISTANCE = 110.0  # RGB distance between an object and its local background
_JPEG_QUALITY = 92


def default_dataset_dir() -> str:
    """The cache folder of the default synthetic set: `$REFINEDET_TF_CACHE/synthetic-v2`
    (the cache root defaults to ~/.cache/refinedet_tf)."""
    root = os.environ.get("REFINEDET_TF_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "refinedet_tf")
    return os.path.join(root, f"synthetic-v{VERSION}")


def ensure_synthetic_dataset(output_dir: str | None = None, **params) -> str:
    """Returns a folder holding the synthetic set, generating it on first use.

    Generation writes to a temporary sibling folder and renames it into place, so a crash or a
    concurrent run never leaves a half-written dataset at the final path.

    Args:
      output_dir: where it lives; None: `default_dataset_dir()` for the default parameters,
        else a sibling named after the parameters.
      **params: num_train, num_val, image_size, seed (see `generate_voc_dataset`).
    Raises:
      ValueError when `output_dir` holds a synthetic set made with other parameters.
    """
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown synthetic dataset parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    params = {**DEFAULTS, **params}
    if output_dir is None:
        output_dir = default_dataset_dir()
        if params != DEFAULTS:
            output_dir += "-{num_train}-{num_val}-{image_size}px-seed{seed}".format(**params)
    stamp = os.path.join(output_dir, "synthetic.json")
    if os.path.exists(stamp):
        with open(stamp, encoding="utf-8") as f:
            found = json.load(f)
        wanted = {"version": VERSION, **params}
        if found != wanted:
            raise ValueError(f"{output_dir}: holds a synthetic set made with {found}, not {wanted}; "
                             "delete it or choose another folder")
        return output_dir
    if os.path.exists(output_dir) and os.listdir(output_dir):
        raise ValueError(f"{output_dir}: exists, is not empty and is not a synthetic dataset")
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    temp = tempfile.mkdtemp(prefix=".synthetic-tmp-", dir=parent)
    try:
        generate_voc_dataset(temp, **params)
        if os.path.isdir(output_dir):
            os.rmdir(output_dir)  # empty (checked above)
        os.rename(temp, output_dir)
    except OSError:
        # Another process finished first: keep its copy if it is complete.
        shutil.rmtree(temp, ignore_errors=True)
        if not os.path.exists(stamp):
            raise
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return output_dir


def generate_voc_dataset(output_dir: str, num_train: int = 1000, num_val: int = 200,
                         image_size: int = 256, seed: int = 0) -> str:
    """Writes the synthetic set as a VOC folder and returns `output_dir`.

    Layout: JPEGImages/<id>.jpg, Annotations/<id>.xml, ImageSets/Main/{train,val}.txt,
    labelmap.txt (the `CLASSES`), synthetic.json (the parameters). Ids: `train_00000`, ...

    Args:
      output_dir: created if needed; existing files of the same names are overwritten.
      num_train, num_val: images per split.
      image_size: side of the square images, >= 64.
      seed: same seed -> byte-identical files.
    """
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64 (objects are >= 12 px), got {image_size}")
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        ids = []
        for index in range(count):
            image_id = f"{split}_{index:05d}"
            rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
            image, objects = render_image(rng, image_size)
            ok, jpeg = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"OpenCV could not encode {image_id}")
            with open(os.path.join(output_dir, "JPEGImages", image_id + ".jpg"), "wb") as f:
                f.write(jpeg.tobytes())
            with open(os.path.join(output_dir, "Annotations", image_id + ".xml"), "w", encoding="utf-8") as f:
                f.write(_voc_xml(image_id, image_size, objects))
            ids.append(image_id)
        with open(os.path.join(output_dir, "ImageSets", "Main", f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("".join(i + "\n" for i in ids))
    with open(os.path.join(output_dir, "labelmap.txt"), "w", encoding="utf-8") as f:
        f.write("".join(name + "\n" for name in CLASSES))
    with open(os.path.join(output_dir, "synthetic.json"), "w", encoding="utf-8") as f:
        json.dump({"version": VERSION, "num_train": num_train, "num_val": num_val,
                   "image_size": image_size, "seed": seed}, f, sort_keys=True)
    return output_dir


def render_image(rng: np.random.Generator, size: int):
    """One image and its objects.

    Returns:
      image: uint8 [size, size, 3] RGB.
      objects: list of (class name, (x0, y0, x1, y1)): 0-based inclusive pixel extents.
    """
    image = _background(rng, size)
    boxes, objects = [], []
    low, high = _OBJECTS_PER_IMAGE
    for _object in range(int(rng.integers(low, high + 1))):
        for _ in range(30):
            name = CLASSES[int(rng.integers(len(CLASSES)))]
            mask = _shape_mask(rng, name, size)
            ys, xs = np.nonzero(mask >= 128)
            if len(ys) == 0:
                continue
            box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
            if all(_covered(old, box) <= _MAX_COVERED for old in boxes):
                break
        else:
            continue  # no room for another object
        colour = _object_colour(rng, image, box)
        # Composite inside the box (+2 px of faint anti-aliased edge) only: it is much faster.
        x0, y0 = max(box[0] - 2, 0), max(box[1] - 2, 0)
        x1, y1 = min(box[2] + 3, size), min(box[3] + 3, size)
        alpha = (mask[y0:y1, x0:x1].astype(np.float32) / 255.0)[:, :, None]
        image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1.0 - alpha) + colour * alpha
        boxes.append(box)
        objects.append((name, box))
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(2.0, 8.0))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), objects


def _background(rng, size):
    """Gradient between two muted colours + low-frequency blotches + faint straight lines."""
    c0, c1 = (_hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.45), rng.uniform(0.3, 0.85))
              for _ in range(2))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = np.clip(0.5 + (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle), 0, 1)[:, :, None]
    image = c0 * (1 - t) + c1 * t
    grid = int(rng.integers(3, 9))
    blotches = rng.normal(0.0, 18.0, (grid, grid, 3)).astype(np.float32)
    image = image + cv2.resize(blotches, (size, size), interpolation=cv2.INTER_CUBIC)
    lines = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(0, 5))):
        p0 = tuple(int(v) for v in rng.integers(0, size, 2))
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.line(lines, p0, p1, 255, 1, cv2.LINE_AA)
    line_colour = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, 0.4), rng.uniform(0.2, 0.9))
    a = (lines.astype(np.float32) * np.float32(0.3 / 255.0))[:, :, None]
    return (image * (1 - a) + line_colour * a).astype(np.float32)


def _shape_mask(rng, name, size):
    """An anti-aliased coverage mask (uint8 0..255) of one randomly placed, sized shape."""
    if rng.uniform() < 0.12:
        extent = rng.uniform(12, 24)
    else:
        extent = math.exp(rng.uniform(math.log(24), math.log(0.7 * size)))
    aspect = rng.uniform(0.7, 1.4) if name in ("circle", "square", "circle_outline", "square_outline") else 1.0
    w = min(extent * math.sqrt(aspect), 0.9 * size)
    h = min(extent / math.sqrt(aspect), 0.9 * size)
    cx = rng.uniform(w / 2 + 2, size - w / 2 - 2)
    cy = rng.uniform(h / 2 + 2, size - h / 2 - 2)
    outline = name.endswith("_outline")
    thickness = max(2.0, min(w, h) / 7.0) if outline else 0.0
    base = name.replace("_outline", "")
    if base == "circle":
        points = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
        rotation = 0.0
    elif base == "square":
        points = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        rotation = rng.uniform(-20, 20)
    elif base == "triangle":
        points = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        rotation = rng.uniform(0, 360)
    else:  # star: 5 points, inner radius 0.42
        points = [((1.0 if k % 2 == 0 else 0.42) * math.cos(-math.pi / 2 + k * math.pi / 5),
                   (1.0 if k % 2 == 0 else 0.42) * math.sin(-math.pi / 2 + k * math.pi / 5))
                  for k in range(10)]
        rotation = rng.uniform(0, 360)
    # Outlines are stroked along a path inset by half the stroke, so the outer edge is the shape.
    rx, ry = max(w / 2 - thickness / 2, 1.0), max(h / 2 - thickness / 2, 1.0)
    r = math.radians(rotation)
    pts = [(cx + rx * px * math.cos(r) - ry * py * math.sin(r),
            cy + rx * px * math.sin(r) + ry * py * math.cos(r)) for px, py in points]
    shift = 4  # sub-pixel vertex precision (1/16 px)
    poly = np.array([[round(x * 16), round(y * 16)] for x, y in pts], np.int32)[None]
    mask = np.zeros((size, size), np.uint8)
    if outline:
        cv2.polylines(mask, poly, True, 255, max(2, round(thickness)), cv2.LINE_AA, shift)
    else:
        cv2.fillPoly(mask, poly, 255, cv2.LINE_AA, shift)
    return mask


def _covered(old, new):
    """Fraction of box `old` (x0, y0, x1, y1 inclusive) covered by box `new`."""
    iw = min(old[2], new[2]) - max(old[0], new[0]) + 1
    ih = min(old[3], new[3]) - max(old[1], new[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / ((old[2] - old[0] + 1) * (old[3] - old[1] + 1))


def _object_colour(rng, image, box):
    """A saturated colour far (in RGB) from the background under the box."""
    x0, y0, x1, y1 = box
    local = image[y0:y1 + 1, x0:x1 + 1].reshape(-1, 3).mean(axis=0)
    best, best_distance = None, -1.0
    for _ in range(12):
        colour = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0))
        distance = float(np.linalg.norm(colour - local))
        if distance >= _MIN_COLOUR_DISTANCE:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def _hsv_to_rgb(h, s, v):
    """h in degrees, s and v in [0, 1] -> float32 RGB in [0, 255]."""
    c = v * s
    x = c * (1 - abs((h / 60.0) % 2 - 1))
    m = v - c
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h // 60) % 6]
    return np.array([(r + m) * 255, (g + m) * 255, (b + m) * 255], np.float32)


def _voc_xml(image_id, size, objects):
    lines = ["<annotation>", "  <folder>JPEGImages</folder>", f"  <filename>{image_id}.jpg</filename>",
             "  <source><database>refinedet_tf synthetic</database></source>",
             f"  <size><width>{size}</width><height>{size}</height><depth>3</depth></size>",
             "  <segmented>0</segmented>"]
    for name, (x0, y0, x1, y1) in objects:
        # 0-based inclusive pixel extents -> VOC's 1-based inclusive indices.
        lines += ["  <object>", f"    <name>{name}</name>", "    <pose>Unspecified</pose>",
                  "    <truncated>0</truncated>", "    <difficult>0</difficult>",
                  f"    <bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
                  f"<xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax></bndbox>", "  </object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"
