"""Deployment: SavedModel (TF Serving, Object Detection API conventions), TFLite and ONNX.

    from refinedet_tf.export import export_saved_model, export_tflite, export_onnx
    export_saved_model(model, config, "exported/refinedet", version=1, label_map=label_map)

`saved_model` needs only TensorFlow; `tflite` runs its models in `ai-edge-litert` when it is
installed (else TensorFlow's own interpreter); `onnx` needs the `onnx` extra (tf2onnx,
onnxruntime) and imports it only when called.
"""

from refinedet_tf.export.onnx import OnnxDetector, export_onnx
from refinedet_tf.export.saved_model import (
    SIGNATURES,
    DetectionModule,
    SavedModelDetector,
    ServingRequestError,
    export_saved_model,
    outputs_to_rest_response,
    predict_request_to_inputs,
    resize_and_preprocess,
    rest_request_to_inputs,
)
from refinedet_tf.export.tflite import QUANTIZATIONS, TFLiteDetector, calibration_images, export_tflite

__all__ = [
    "QUANTIZATIONS", "SIGNATURES", "DetectionModule", "OnnxDetector", "SavedModelDetector",
    "ServingRequestError", "TFLiteDetector", "calibration_images", "export_onnx", "export_saved_model", "export_tflite",
    "outputs_to_rest_response", "predict_request_to_inputs", "resize_and_preprocess",
    "rest_request_to_inputs",
]
