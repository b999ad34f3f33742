"""SavedModel export with the TF Object Detection API serving conventions.

The exported SavedModel holds everything between pixels and detections: warp resize to the
preset's size (bilinear, as the evaluation pipeline), the preset's normalization
(`contract.resize_and_preprocess`), the network, and the architecture's `detect` (for
RefineDet: two-step decoding, per-class top-k, `tf.image.combined_non_max_suppression`).
Existing Object Detection API clients work unchanged:

  signature        input `input_tensor`                        for
  serving_default  uint8 [N, H, W, 3] RGB (any H, W)           pixels
  encoded_image    string [N] JPEG/PNG/GIF/BMP file bytes       files (each its own size)
  tf_example       string [N] serialized tf.train.Example      records with `image/encoded`

  outputs: the served outputs of `contract.py` (detection_boxes [N, D, 4] normalized yxyx of
           the ORIGINAL image: the warp resize keeps normalized coordinates valid;
           detection_scores, detection_classes as label-map ids, num_detections; all float32);
           with raw_scores also raw_detection_scores [N, A, C] float32 (the architecture's
           `class_scores`: every candidate box, column 0 = background).

Layout, as TF Serving expects: `export_dir/<version>/saved_model.pb`, `variables/`, and in
`assets/` the files of `model_files.py` (config.json with the export's thresholds,
labelmap.txt, labelmap.pbtxt). `saved_model_client.SavedModelDetector` loads it.

Bad input is rejected with a message, never answered with garbage: a signature rejects a
tensor of another dtype ("was expected to be a uint8 tensor but is a float tensor"); a restored
signature does not check shapes, so the graph starts with EnsureShape ("Shape of tensor
input_tensor [8,8,3] is not compatible with expected shape [?,?,?,3]") for wrong ranks and
channel counts; assertions reject an empty batch, an empty image, an empty string and bytes
that are not an image; the decoders reject truncated files and ParseExample a tf.Example
without `image/encoded`. (A restored signature called with a NumPy array of another dtype
casts it silently; `SavedModelDetector` refuses such arrays.)
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf

from refinedet_tf.architectures import architecture_for
from refinedet_tf.export.contract import (
    DEFAULT_MAX_DETECTIONS,
    INPUT_NAME,
    RAW_SCORES,
    export_config,
    label_ids_table,
    resize_and_preprocess,
    served_outputs,
)
from refinedet_tf.export.model_files import class_names, write_model_files

SIGNATURES = ("serving_default", "encoded_image", "tf_example")
# File signatures accepted by tf.io.decode_image; checked first so that a non-image gets a
# message naming the input rather than the decoder's.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


class DetectionModule(tf.Module):
    """Pixels (or encoded files, or tf.Examples) -> detections, as exportable tf.functions.

    The Keras model is a tracked attribute (`self.model`), so its variables are saved with the
    module. Thresholds are fixed at construction (constants of the graph).

    Args:
      model: the Keras model of `config`'s architecture (`build_model` / `load_model`).
      config: its config; `max_detections`, `score_threshold`, `nms_iou` are the ones the
        export uses (see `export_config`).
      label_map: optional `refinedet_tf.data.LabelMap`: detection_classes carry its ids.
      raw_scores: also output raw_detection_scores [N, A, C].
    """

    def __init__(self, model, config, label_map=None, raw_scores=False):
        super().__init__(name="refinedet_detection")
        self.model = model
        self.config = config
        self._architecture = architecture_for(config)
        self._raw_scores = bool(raw_scores)
        self._label_ids = label_ids_table(config, label_map)

    def detect_preprocessed(self, images):
        """float32 [N, S, S, 3] preprocessed -> output dict (see the module docstring)."""
        outputs = self.model(images, training=False)
        served = served_outputs(self._architecture.detect(outputs), self._label_ids)
        if self._raw_scores:
            served[RAW_SCORES] = self._architecture.class_scores(outputs)
        return served

    def detect_images(self, images):
        """uint8 (or float) [N, H, W, 3] RGB in [0, 255] -> output dict; checks the input."""
        # A restored signature function checks the dtype of what it is fed but not its shape;
        # EnsureShape does, at run time: "Shape of tensor input_tensor [50,70,3] is not
        # compatible with expected shape [?,?,?,3]".
        images = tf.ensure_shape(images, [None, None, None, 3], name=INPUT_NAME)
        shape = tf.shape(images)
        checks = [
            tf.debugging.assert_positive(
                shape[0], message=f"{INPUT_NAME} is an empty batch (N = 0): send at least one image"),
            tf.debugging.assert_positive(
                shape[1:3], message=f"{INPUT_NAME} has an empty image (H or W = 0)"),
        ]
        with tf.control_dependencies(checks):
            images = tf.identity(images)
        return self.detect_preprocessed(resize_and_preprocess(images, self.config))

    def detect_encoded(self, encoded):
        """string [N] image file bytes -> output dict; each image keeps its own size."""
        encoded = tf.ensure_shape(encoded, [None], name=INPUT_NAME)
        checks = [tf.debugging.assert_positive(
            tf.size(encoded), message=f"{INPUT_NAME} is an empty batch (N = 0): send at least one image")]
        with tf.control_dependencies(checks):
            encoded = tf.identity(encoded)
        size = self.config.image_size
        images = tf.map_fn(
            self._decode_one, (encoded, tf.range(tf.size(encoded))),
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return self.detect_preprocessed(images)

    def _decode_one(self, args):
        data, index = args
        head = tf.strings.substr(data, 0, 4)
        is_image = tf.reduce_any([tf.strings.substr(head, 0, len(m)) == m for m in _IMAGE_MAGIC])
        checks = [
            tf.debugging.Assert(tf.strings.length(data) > 0, [
                f"{INPUT_NAME}[i] is an empty string, not an image file; i =", index]),
            tf.debugging.Assert(is_image, [
                f"{INPUT_NAME}[i] is not a JPEG, PNG, GIF or BMP file (corrupt or not an "
                "image); i =", index, "first bytes:", head], summarize=4),
        ]
        with tf.control_dependencies(checks):
            image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        image = tf.ensure_shape(image, [None, None, 3])
        return resize_and_preprocess(image[None], self.config)[0]

    def detect_tf_examples(self, serialized):
        """string [N] serialized tf.train.Example (`image/encoded`) -> output dict."""
        serialized = tf.ensure_shape(serialized, [None], name=INPUT_NAME)
        features = tf.io.parse_example(
            serialized, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
        return self.detect_encoded(features["image/encoded"])

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)])
    def serving_default(self, input_tensor):
        return self.detect_images(input_tensor)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
    def encoded_image(self, input_tensor):
        return self.detect_encoded(input_tensor)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
    def tf_example(self, input_tensor):
        return self.detect_tf_examples(input_tensor)

    def signatures(self):
        """{signature name: concrete function} for `tf.saved_model.save`."""
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}


def export_saved_model(model, config, export_dir, version=1, label_map=None,
                       max_detections=DEFAULT_MAX_DETECTIONS, score_threshold=None,
                       nms_iou=None, raw_scores=False, overwrite=False):
    """Writes `export_dir/<version>/` (saved_model.pb, variables/, assets/) and returns its path.

    The SavedModel is written to a hidden sibling folder and renamed into place, so a TF
    Serving instance watching `export_dir` never loads a half-written version.

    Args:
      model, config: the Keras model and its config (`architectures.architecture_for`).
      export_dir: the model base path TF Serving watches.
      version: positive int, the version folder.
      label_map: optional LabelMap (names and ids; its size must match config.num_classes).
      max_detections, score_threshold, nms_iou: post-processing (None: the config's).
      raw_scores: also export raw_detection_scores.
      overwrite: replace an existing version folder (else FileExistsError).
    """
    version = int(version)
    if version < 1:
        raise ValueError(f"version must be a positive integer (TF Serving's version folders), got {version}")
    config = export_config(config, max_detections, score_threshold, nms_iou)
    class_names(config, label_map)  # checks the label map against the model first
    target = os.path.join(export_dir, str(version))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target} exists: choose another --version or pass --overwrite")
    os.makedirs(export_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{version}-", dir=export_dir)
    try:
        asset_dir = os.path.join(staging, "_assets_source")
        os.makedirs(asset_dir)
        module = DetectionModule(model, config, label_map, raw_scores)
        # Assets are copied into assets/ and tracked, so a copy of the SavedModel keeps them.
        module.model_files = [tf.saved_model.Asset(p)
                              for p in write_model_files(asset_dir, config, label_map)]
        saved = os.path.join(staging, "saved_model")
        tf.saved_model.save(module, saved, signatures=module.signatures())
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(saved, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
