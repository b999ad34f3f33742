"""The files beside every exported model: the config and the label map.

  config.json     the config, with the export's post-processing thresholds
  labelmap.txt    class names, one per line, contiguous ids 1..C-1
  labelmap.pbtxt  names with the label-map ids that detection_classes carries

The SavedModel keeps them in `assets/`; TFLite and ONNX exports write them into their folder.
"""

import json
import os

from refinedet_tf.architectures import config_from_json
from refinedet_tf.data.label_map import load_label_map
from refinedet_tf.export.contract import label_ids_table

LABELMAP_ASSET = "labelmap.txt"
LABELMAP_PBTXT_ASSET = "labelmap.pbtxt"
CONFIG_ASSET = "config.json"


def class_names(config, label_map=None):
    """Names indexed by contiguous class id (0 = background); `class_k` without a label map."""
    if label_map is not None:
        label_ids_table(config, label_map)  # checks the size
        return list(label_map.names)
    return ["background"] + [f"class_{k}" for k in range(1, config.num_classes)]


def write_model_files(folder, config, label_map=None):
    """Writes config.json, labelmap.txt (names) and labelmap.pbtxt (names + label-map ids)
    into `folder`, beside an exported model; returns their paths."""
    names = class_names(config, label_map)
    return [
        _write(folder, CONFIG_ASSET, config.to_json()),
        _write(folder, LABELMAP_ASSET, "".join(n + "\n" for n in names[1:])),
        _write(folder, LABELMAP_PBTXT_ASSET, _pbtxt(names, label_ids_table(config, label_map))),
    ]


def read_model_files(folder):
    """(config, class names [C] with "background" first, label-map ids [C]) from the files
    `write_model_files` wrote (labelmap files optional: class_k names and ids 0..C-1)."""
    path = os.path.join(folder, CONFIG_ASSET)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the export writes it beside the model")
    with open(path, encoding="utf-8") as f:
        config = config_from_json(f.read())
    names = class_names(config)
    ids = list(range(config.num_classes))
    pbtxt = os.path.join(folder, LABELMAP_PBTXT_ASSET)
    txt = os.path.join(folder, LABELMAP_ASSET)
    if os.path.isfile(pbtxt) or os.path.isfile(txt):
        label_map = load_label_map(pbtxt if os.path.isfile(pbtxt) else txt)
        names, ids = list(label_map.names), list(label_map.dataset_ids)
    return config, names, ids


def _write(folder, name, text):
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _pbtxt(names, ids):
    return "".join(
        f'item {{\n  id: {int(ids[k])}\n  name: {json.dumps(names[k], ensure_ascii=False)}\n}}\n'
        for k in range(1, len(names)))
