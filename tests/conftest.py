import json
import os
import sys

import cv2
import numpy as np
import pytest

# Quieter TensorFlow logs in test output; must be set before TensorFlow is imported (nothing above imports it).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/
from bench.machine import describe_cpu  # noqa: E402  (importable once the line above put the repository on the path)


def pytest_terminal_summary(terminalreporter):
    """Every run ends by naming the CPU and its extensions (also under -q): float32 results
    differ in their last digits between oneDNN's AVX2, AVX-512 and AMX kernels, so a failure
    report must say which ran."""
    terminalreporter.write_line(f"cpu: {describe_cpu()}")


# ---- Data fixtures: tiny datasets written by the tests themselves, with hand-known boxes.

RACCOON_DIR = "/work/shared/datasets/raccoon"


def write_image(path, image, ext=None):
    """Writes RGB (or grey/RGBA/16-bit) pixels with OpenCV in the format of `ext` (default: path's)."""
    pixels = image[..., ::-1] if image.ndim == 3 and image.shape[2] == 3 else image
    if image.ndim == 3 and image.shape[2] == 4:
        pixels = image[..., [2, 1, 0, 3]]
    ok, data = cv2.imencode(ext or os.path.splitext(path)[1], pixels)
    assert ok
    with open(path, "wb") as f:
        f.write(data.tobytes())


def voc_xml(filename, width, height, objects):
    """objects: (name, xmin, ymin, xmax, ymax[, difficult]) in VOC 1-based pixels."""
    parts = [f"<annotation><filename>{filename}</filename>"
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for obj in objects:
        name, xmin, ymin, xmax, ymax = obj[:5]
        difficult = obj[5] if len(obj) > 5 else 0
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
                     f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
                     "</bndbox></object>")
    return "".join(parts) + "</annotation>"


def make_voc(root, items, labelmap=("cat", "dog"), splits=None):
    """Writes a VOC folder. items: list of dicts id, image (array), objects, [ext, xml_size, xml]."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for item in items:
        ext = item.get("ext", ".jpg")
        filename = item["id"] + ext
        if item.get("image") is not None:
            write_image(os.path.join(root, "JPEGImages", filename), item["image"], item.get("encode_as"))
        height, width = item.get("xml_size") or item["image"].shape[:2]
        xml = item.get("xml") or voc_xml(filename, width, height, item.get("objects", []))
        with open(os.path.join(root, "Annotations", item["id"] + ".xml"), "w") as f:
            f.write(xml)
    if labelmap is not None:
        with open(os.path.join(root, "labelmap.txt"), "w") as f:
            f.write("".join(n + "\n" for n in labelmap))
    for split, ids in (splits or {}).items():
        with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("".join(i + "\n" for i in ids))
    return str(root)


def textured(height, width, seed=0):
    """A smooth random RGB image (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 8, 2), max(width // 8, 2), 3)).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


# Hand-known boxes. a: 100 wide x 50 high; b: 64 x 80; c: 40 x 40.
TINY_ITEMS = [
    {"id": "a", "objects": [("cat", 1, 1, 50, 25), ("dog", 51, 26, 100, 50, 1)]},
    {"id": "b", "objects": [("dog", 17, 21, 48, 60)]},
    {"id": "c", "objects": [("cat", 11, 1, 30, 40), ("cat", 1, 11, 40, 30)]},
]
TINY_SIZES = {"a": (50, 100), "b": (80, 64), "c": (40, 40)}
TINY_EXPECTED = {  # normalized yxyx, classes (cat=1, dog=2), difficult
    "a": ([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], [1, 2], [False, True]),
    "b": ([[0.25, 0.25, 0.75, 0.75]], [2], [False]),
    "c": ([[0, 0.25, 1, 0.75], [0.25, 0, 0.75, 1]], [1, 1], [False, False]),
}


@pytest.fixture
def tiny_voc(tmp_path):
    """A 3-image, 2-class VOC folder (train: a, b; val: c) with the boxes of TINY_EXPECTED."""
    items = [dict(item, image=textured(*TINY_SIZES[item["id"]], seed=k))
             for k, item in enumerate(TINY_ITEMS)]
    return make_voc(tmp_path / "voc", items, splits={"train": ["a", "b"], "val": ["c"]})


def coco_json_from_voc_items(path, items, sizes, categories=((3, "cat"), (7, "dog")), extra=None):
    """A COCO instances JSON with the same boxes as VOC `items` (xywh = xmin-1, ymin-1, w, h)."""
    ids = {name: cid for cid, name in categories}
    images, annotations = [], []
    for k, item in enumerate(items):
        height, width = sizes[item["id"]]
        images.append({"id": 10 + k, "file_name": item["id"] + ".jpg", "height": height, "width": width})
        for obj in item["objects"]:
            name, xmin, ymin, xmax, ymax = obj[:5]
            annotations.append({"id": len(annotations) + 1, "image_id": 10 + k, "category_id": ids[name],
                                "bbox": [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1],
                                "iscrowd": 0, "area": 1.0})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": cid, "name": name} for cid, name in categories]}
    if extra:
        extra(data)
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


# ---------------------------------------------------------------------------------------------
# A small trained model (the demo preset trained by `python train.py`, committed so that tests
# of evaluation and export see real detections) and the synthetic val split it was not
# trained on.

TRAINED_MODEL_DIR = os.path.join(os.path.dirname(__file__), "data", "demo_model")


@pytest.fixture(scope="session")
def tiny_trained_model_dir():
    if not os.path.exists(os.path.join(TRAINED_MODEL_DIR, "best.weights.h5")):
        pytest.fail(f"missing {TRAINED_MODEL_DIR}/best.weights.h5 (see tests/data/demo_model/README.md)")
    return TRAINED_MODEL_DIR


@pytest.fixture(scope="session")
def synthetic_val_dir(tmp_path_factory):
    """The first 48 val images of the default synthetic set (same seed: same pixels), plus its
    first 16 train images (int8 calibration)."""
    from refinedet_tf.data.synthetic import generate_voc_dataset

    return generate_voc_dataset(str(tmp_path_factory.mktemp("synthetic") / "voc"), num_train=16, num_val=48,
                                image_size=256, seed=0)


@pytest.fixture(scope="session")
def exported_demo_model(tiny_trained_model_dir, synthetic_val_dir, tmp_path_factory):
    """The demo model in its deployment forms, as export_saved_model.py writes them: 1/
    (SavedModel), tflite/ (fp32, int8 calibrated on the 16 train images; fp16 is tested on a
    smaller model, test_export_tflite.py), onnx/; 500 detections per image, as the checkpoint's
    evaluation keeps. Every test that uses it is in test_export_verify.py (built once)."""
    from refinedet_tf.checkpoints import load_model
    from refinedet_tf.export import calibration_images, export_onnx, export_saved_model, export_tflite

    out = str(tmp_path_factory.mktemp("exported_demo"))
    model, config = load_model(tiny_trained_model_dir)
    post = dict(max_detections=500)
    export_saved_model(model, config, out, **post)
    calibration = calibration_images(synthetic_val_dir, config, 16, split="train")
    for quantization in ("fp32", "int8"):
        export_tflite(model, config, os.path.join(out, "tflite"), quantization,
                      representative_images=calibration if quantization == "int8" else None, **post)
    export_onnx(model, config, os.path.join(out, "onnx"), **post)
    return out
