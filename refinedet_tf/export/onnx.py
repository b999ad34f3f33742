"""ONNX export through tf2onnx (the `onnx` extra), checked with ONNX Runtime.

The ONNX model is the SavedModel's `serving_default` end to end: input `input_tensor` uint8
[N, H, W, 3] RGB of any size; bilinear warp resize and the preset's normalization; the
network; the architecture's `detect_builtin`. Outputs: the served outputs of `contract.py`
(detection_boxes [N, D, 4] float32 normalized yxyx, detection_scores [N, D],
detection_classes [N, D] float32 label-map ids, num_detections [N] float32).

tf2onnx converts `CombinedNonMaxSuppression` only when boxes are shared across classes
(RefineDet's are per class: "CombinedNonMaxSuppression only currently implemented for boxes
shared across classes"), so the post-processing here is `detect_builtin`, whose NMS is the
built-in class-aware one of `nms.py` (NonMaxSuppressionV5 -> ONNX NonMaxSuppression), mapped
over the batch (an ONNX Loop). It gives the same detections as the architecture's `detect`.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from refinedet_tf.architectures import architecture_for
from refinedet_tf.export.contract import (
    DEFAULT_MAX_DETECTIONS,
    INPUT_NAME,
    export_config,
    label_ids_table,
    resize_and_preprocess,
    served_outputs,
)
from refinedet_tf.export.model_files import read_model_files, write_model_files

DEFAULT_OPSET = 17
ONNX_FILE = "refinedet.onnx"


def _require_tf2onnx():
    try:
        import tf2onnx  # noqa: PLC0415  optional (onnx extra)
    except ImportError as e:
        raise ImportError("ONNX export needs tf2onnx: pip install 'refinedet-tf[onnx]'") from e
    return tf2onnx


def export_onnx(model, config, output_dir, max_detections=DEFAULT_MAX_DETECTIONS,
                score_threshold=None, nms_iou=None, label_map=None, opset=DEFAULT_OPSET):
    """Writes `output_dir/refinedet.onnx` (+ `write_model_files`) and returns its path.

    Args: as `export_saved_model`; opset: the ONNX opset (17 by default).
    """
    tf2onnx = _require_tf2onnx()
    config = export_config(config, max_detections, score_threshold, nms_iou)
    architecture = architecture_for(config)
    label_ids = label_ids_table(config, label_map)
    spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(input_tensor):
        outputs = model(resize_and_preprocess(input_tensor, config), training=False)
        return served_outputs(architecture.detect_builtin(outputs), label_ids)

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, ONNX_FILE)
    tf2onnx.convert.from_function(serve, input_signature=[spec], opset=opset, output_path=path)
    write_model_files(output_dir, config, label_map)
    return path


class OnnxDetector:
    """An exported `.onnx` in an ONNX Runtime session (CPU), with its config beside it.

    Call it with uint8 [N, H, W, 3] RGB (or one [H, W, 3] image); returns the output dict.
    """

    def __init__(self, path, num_threads=2):
        import onnxruntime as ort  # noqa: PLC0415  optional (onnx extra)

        self.config, self.class_names, self.label_ids = read_model_files(
            os.path.dirname(os.path.abspath(path)))
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images):
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or not images.shape[0]:
            raise ValueError(f"expected uint8 [N, H, W, 3] RGB images with N >= 1, got "
                             f"{images.dtype} {list(images.shape)}")
        values = self.session.run(None, {INPUT_NAME: images})
        return dict(zip(self.output_names, values))
