"""Deployment: SavedModel (TF Serving, Object Detection API conventions), TFLite and ONNX.

    from refinedet_tf.export import export_saved_model, export_tflite, export_onnx
    export_saved_model(model, config, "exported/refinedet", version=1, label_map=label_map)

Every form serves the contract of `contract.py` (inputs, outputs, `served_outputs`) with the
files of `model_files.py` beside it, and takes its detections from the config's architecture
(`architectures.architecture_for`): nothing here names one.

  contract            the served inputs and outputs, `resize_and_preprocess`, `served_outputs`
  model_files         config.json, labelmap.txt, labelmap.pbtxt beside an exported model
  saved_model         `DetectionModule` (the signatures) and `export_saved_model`
  saved_model_client  `SavedModelDetector`: loading an export and calling its signatures
  tflite              `export_tflite` (fp32, fp16, int8 network + float post-processing)
  calibration         `calibration_images`: int8 calibration data
  tflite_detector     `TFLiteDetector`: running a .tflite (and its post-processing model)
  onnx                `export_onnx` and `OnnxDetector`
  verify              every exported form's mAP on the same images (evaluate.py --export_dir)

`saved_model` needs only TensorFlow; `tflite_detector` runs models in `ai-edge-litert` when it
is installed (else TensorFlow's own interpreter); `onnx` needs the `onnx` extra (tf2onnx,
onnxruntime) and imports it only when called.
"""

from refinedet_tf.export.calibration import calibration_images
from refinedet_tf.export.contract import resize_and_preprocess
from refinedet_tf.export.onnx import OnnxDetector, export_onnx
from refinedet_tf.export.saved_model import SIGNATURES, DetectionModule, export_saved_model
from refinedet_tf.export.saved_model_client import SavedModelDetector
from refinedet_tf.export.tflite import QUANTIZATIONS, export_tflite
from refinedet_tf.export.tflite_detector import TFLiteDetector

__all__ = [
    "QUANTIZATIONS", "SIGNATURES", "DetectionModule", "OnnxDetector", "SavedModelDetector", "TFLiteDetector",
    "calibration_images", "export_onnx", "export_saved_model", "export_tflite", "resize_and_preprocess",
]
