"""ONNX export (tf2onnx) with the whole pipeline inside, checked in ONNX Runtime."""

import os

import numpy as np
import pytest

from refinedet_tf.checkpoints import load_model
from test_export_saved_model import LABEL_IDS, MAX_DETECTIONS, assert_same_detections, keras_detections, make_checkpoint

pytest.importorskip("tf2onnx", reason="the onnx extra (tf2onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")


def test_onnx_matches_the_keras_model(tmp_path):
    import onnx

    from refinedet_tf.data.label_map import load_label_map
    from refinedet_tf.export import OnnxDetector, export_onnx

    checkpoint = make_checkpoint(tmp_path / "model")
    model, config = load_model(checkpoint)
    label_map = load_label_map(os.path.join(checkpoint, "labelmap.pbtxt"))
    path = export_onnx(model, config, str(tmp_path / "onnx"), max_detections=MAX_DETECTIONS,
                       label_map=label_map)
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    ops = {node.op_type for node in proto.graph.node}
    assert "NonMaxSuppression" in ops or "Loop" in ops, ops
    initializers = {i.name for i in proto.graph.initializer}
    (graph_input,) = [i for i in proto.graph.input if i.name not in initializers]
    assert graph_input.name == "input_tensor"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8

    detector = OnnxDetector(path)
    assert detector.class_names == ["background", "circle", "square", "star"]
    rng = np.random.RandomState(7)
    for shape in [(1, 128, 128, 3), (2, 97, 143, 3), (1, 300, 200, 3)]:
        images = rng.randint(0, 256, shape).astype(np.uint8)
        ours = detector(images)
        reference = keras_detections(model, config, images)
        assert ours["detection_boxes"].shape == (shape[0], MAX_DETECTIONS, 4)
        assert_same_detections(ours, reference, box_atol=1e-4, score_atol=1e-5)
        assert set(ours["detection_classes"][ours["detection_classes"] > 0]) <= set(LABEL_IDS[1:])
    with pytest.raises(ValueError, match=r"expected uint8 \[N, H, W, 3\]"):
        detector(np.zeros((1, 8, 8, 3), np.float32))
