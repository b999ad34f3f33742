"""SavedModel export with the TF Object Detection API serving conventions, and a client side.

The exported SavedModel holds everything between pixels and detections: warp resize to the
preset's size (bilinear, as the evaluation pipeline), the preset's normalization
(`preprocess_images`), the network, and `postprocess.detect` (two-step decoding, per-class
top-k, `tf.image.combined_non_max_suppression`). Existing Object Detection API clients work
unchanged:

  signature        input `input_tensor`                        for
  serving_default  uint8 [N, H, W, 3] RGB (any H, W)           pixels
  encoded_image    string [N] JPEG/PNG/GIF/BMP file bytes       files (each its own size)
  tf_example       string [N] serialized tf.train.Example      records with `image/encoded`

  outputs: detection_boxes [N, M, 4] float32 normalized [ymin, xmin, ymax, xmax] of the
           ORIGINAL image (the warp resize keeps normalized coordinates valid); detection_scores
           [N, M] float32; detection_classes [N, M] float32 label-map ids (background is never
           a detection; padding rows are 0); num_detections [N] float32; with raw_scores also
           raw_detection_scores [N, A, C] float32 (every anchor, column 0 = background).
  M = max_detections. Rows past num_detections are zero.

Layout, as TF Serving expects: `export_dir/<version>/saved_model.pb`, `variables/`, and
`assets/labelmap.txt` (class names, one per line, contiguous ids 1..C-1), `assets/labelmap.pbtxt`
(with the label-map ids that detection_classes carries) and `assets/config.json` (the
RefineDetConfig, with the export's thresholds).

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

import base64
import dataclasses
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from refinedet_tf.anchors import generate_anchors
from refinedet_tf.config import RefineDetConfig
from refinedet_tf.data.label_map import load_label_map
from refinedet_tf.postprocess import decode, detect
from refinedet_tf.preprocessing import preprocess_images

SIGNATURES = ("serving_default", "encoded_image", "tf_example")
INPUT_NAME = "input_tensor"
OUTPUT_NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
RAW_SCORES = "raw_detection_scores"
LABELMAP_ASSET = "labelmap.txt"
LABELMAP_PBTXT_ASSET = "labelmap.pbtxt"
CONFIG_ASSET = "config.json"
DEFAULT_MAX_DETECTIONS = 100
# File signatures accepted by tf.io.decode_image; checked first so that a non-image gets a
# message naming the input rather than the decoder's.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


def resize_and_preprocess(images, config):
    """Warp resize to the preset size and normalize: what every exported signature does.

    Args:
      images: [N, H, W, 3] RGB in [0, 255], uint8 or float.
    Returns:
      float32 [N, S, S, 3] model input, S = config.image_size (bilinear without antialiasing
      then clipped to [0, 255], as the evaluation pipeline's `augment.resize_image`).
    """
    size = config.image_size
    resized = tf.image.resize(tf.cast(images, tf.float32), [size, size], method="bilinear",
                              antialias=False)
    return preprocess_images(tf.clip_by_value(resized, 0.0, 255.0), config)


def export_config(config, max_detections=None, score_threshold=None, nms_iou=None):
    """The config with the export's post-processing thresholds (None keeps the config's)."""
    changes = {}
    if max_detections is not None:
        changes["max_detections"] = int(max_detections)
    if score_threshold is not None:
        changes["score_threshold"] = float(score_threshold)
    if nms_iou is not None:
        changes["nms_iou"] = float(nms_iou)
    return dataclasses.replace(config, **changes)


def label_ids_table(config, label_map=None):
    """[C] int32: label-map id of each contiguous class id (entry 0, background, is 0)."""
    if label_map is None:
        return np.arange(config.num_classes, dtype=np.int32)
    if label_map.num_classes != config.num_classes:
        raise ValueError(
            f"the label map has {label_map.num_classes - 1} classes but the model "
            f"{config.name!r} has num_classes={config.num_classes} (= {config.num_classes - 1} "
            "classes + background)")
    return np.asarray(label_map.dataset_ids, np.int32)


def class_names(config, label_map=None):
    """Names indexed by contiguous class id (0 = background); `class_k` without a label map."""
    if label_map is not None:
        label_ids_table(config, label_map)  # checks the size
        return list(label_map.names)
    return ["background"] + [f"class_{k}" for k in range(1, config.num_classes)]


class DetectionModule(tf.Module):
    """Pixels (or encoded files, or tf.Examples) -> detections, as exportable tf.functions.

    The Keras model is a tracked attribute (`self.model`), so its variables are saved with the
    module. Thresholds are fixed at construction (constants of the graph).

    Args:
      model: the RefineDet Keras model (`build_refinedet` / `load_model`).
      config: its RefineDetConfig; `max_detections`, `score_threshold`, `nms_iou` are the ones
        the export uses (see `export_config`).
      label_map: optional `refinedet_tf.data.LabelMap`: detection_classes carry its ids.
      raw_scores: also output raw_detection_scores [N, A, C].
    """

    def __init__(self, model, config, label_map=None, raw_scores=False):
        super().__init__(name="refinedet_detection")
        self.model = model
        self.config = config
        self._raw_scores = bool(raw_scores)
        self._anchors = tf.constant(generate_anchors(config), tf.float32)
        self._label_ids = tf.constant(label_ids_table(config, label_map), tf.float32)

    def detect_preprocessed(self, images):
        """float32 [N, S, S, 3] preprocessed -> output dict (see the module docstring)."""
        outputs = self.model(images, training=False)
        cfg = self.config
        result = detect(outputs, self._anchors, cfg, max_detections=cfg.max_detections,
                        score_threshold=cfg.score_threshold, nms_iou=cfg.nms_iou)
        valid = tf.range(cfg.max_detections)[None, :] < result["num_detections"][:, None]
        classes = tf.where(valid, tf.gather(self._label_ids, result["detection_classes"]), 0.0)
        served = {
            "detection_boxes": result["detection_boxes"],
            "detection_scores": result["detection_scores"],
            "detection_classes": classes,
            "num_detections": tf.cast(result["num_detections"], tf.float32),
        }
        if self._raw_scores:
            served[RAW_SCORES] = decode(outputs, self._anchors, cfg)["scores"]
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
      model, config: the Keras model and its RefineDetConfig.
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
        config = RefineDetConfig.from_json(f.read())
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


# ---------------------------------------------------------------------------------------------
# Client side: loading, and what TF Serving does with a request.


class SavedModelDetector:
    """An exported SavedModel loaded for inference, with its config and class names.

    Args:
      path: the version folder (`export_dir/<version>`) or the base folder (its highest
        version is used, as TF Serving does).
    """

    def __init__(self, path):
        self.path = resolve_version_dir(path)
        self.loaded = tf.saved_model.load(self.path)
        self.config, self.class_names, self.label_ids = read_model_files(
            os.path.join(self.path, "assets"))

    def __call__(self, input_tensor, signature="serving_default"):
        """Runs one signature; returns {output name: np.ndarray}.

        The input must already have the signature's dtype: a restored signature function casts
        a NumPy array to its dtype silently (float pixels in [0, 1] would become zeros), so a
        mismatch raises TypeError here instead.
        """
        if signature not in self.loaded.signatures:
            raise ValueError(f"unknown signature {signature!r}; known: {sorted(self.loaded.signatures)}")
        function = self.loaded.signatures[signature]
        spec = signature_inputs(function)[INPUT_NAME]
        tensor = input_tensor if isinstance(input_tensor, tf.Tensor) else tf.constant(input_tensor)
        if tensor.dtype != spec.dtype:
            raise TypeError(f"signature {signature!r} expects {INPUT_NAME} {spec.dtype.name} "
                            f"{spec.shape.as_list()}, got {tensor.dtype.name}")
        outputs = function(input_tensor=tensor)
        return {k: v.numpy() for k, v in outputs.items()}

def resolve_version_dir(path):
    """`path` itself if it holds saved_model.pb, else its highest numeric version folder."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    versions = [int(d) for d in (os.listdir(path) if os.path.isdir(path) else []) if d.isdigit()
                and os.path.exists(os.path.join(path, d, "saved_model.pb"))]
    if not versions:
        raise FileNotFoundError(f"no SavedModel in {path}: expected saved_model.pb or <version>/saved_model.pb")
    return os.path.join(path, str(max(versions)))


class ServingRequestError(ValueError):
    """A request TF Serving would reject (HTTP 400 / INVALID_ARGUMENT)."""


def signature_inputs(signature):
    """{input name: tf.TensorSpec} of a loaded signature (a ConcreteFunction)."""
    return dict(signature.structured_input_signature[1])


def rest_request_to_inputs(body, signatures):
    """Turns a TF Serving REST predict body into (signature name, {input name: np.ndarray}).

    What TF Serving's `/v1/models/<m>:predict` does before running the signature: the
    `signature_name` (default serving_default), then either the row format `instances` (a list,
    one entry per batch element: the bare value when the signature has one input, else an
    object keyed by input name) or the columnar `inputs` (the whole batch, bare or keyed).
    `{"b64": "..."}` stands for bytes in string inputs. Values are converted to the
    signature's dtype and checked against its shape.

    Args:
      body: the JSON text or the parsed dict.
      signatures: mapping name -> ConcreteFunction (e.g. `loaded.signatures`).
    Raises:
      ServingRequestError with TF Serving's kind of message.
    """
    if isinstance(body, (str, bytes)):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as e:
            raise ServingRequestError(f"JSON parse error: {e}") from None
    if not isinstance(body, dict):
        raise ServingRequestError("the request body must be a JSON object")
    name = body.get("signature_name", "serving_default")
    if name not in signatures:
        raise ServingRequestError(f"Serving signature name: {name!r} not found in signature def; "
                                  f"known: {sorted(signatures)}")
    specs = signature_inputs(signatures[name])
    if ("instances" in body) == ("inputs" in body):
        raise ServingRequestError("the request must have exactly one of 'instances' (row format) "
                                  "or 'inputs' (columnar format)")
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise ServingRequestError("'instances' must be a list, one entry per batch element")
        if len(specs) == 1:
            (key,) = specs
            rows = [r[key] if isinstance(r, dict) and set(r) == {key} else r for r in rows]
            columns = {key: rows}
        else:
            columns = {k: [r[k] for r in rows] for k in specs}
    else:
        inputs = body["inputs"]
        columns = inputs if isinstance(inputs, dict) and set(inputs) <= set(specs) else (
            {next(iter(specs)): inputs} if len(specs) == 1 else None)
        if columns is None:
            raise ServingRequestError(f"'inputs' must be an object keyed by {sorted(specs)}")
    return name, {k: _to_array(k, _unb64(v), specs[k]) for k, v in columns.items()}


def predict_request_to_inputs(request, signatures):
    """Turns a `tensorflow_serving.apis.predict_pb2.PredictRequest` into (name, inputs).

    As TF Serving's gRPC Predict: `model_spec.signature_name` (default serving_default), each
    `inputs[name]` TensorProto to an array; its dtype must be the signature's (no conversion).
    """
    name = request.model_spec.signature_name or "serving_default"
    if name not in signatures:
        raise ServingRequestError(f"Serving signature name: {name!r} not found in signature def")
    specs = signature_inputs(signatures[name])
    unknown = sorted(set(request.inputs) - set(specs))
    missing = sorted(set(specs) - set(request.inputs))
    if unknown or missing:
        raise ServingRequestError(f"request inputs {sorted(request.inputs)} do not match the "
                                  f"signature's {sorted(specs)}")
    inputs = {}
    for key, proto in request.inputs.items():
        dtype = tf.dtypes.as_dtype(proto.dtype)
        if dtype != specs[key].dtype:
            raise ServingRequestError(
                f"input {key!r} of signature {name!r} expects {specs[key].dtype.name} but "
                f"{dtype.name} was provided")
        inputs[key] = _check_shape(key, tf.make_ndarray(proto), specs[key])
    return name, inputs


def outputs_to_rest_response(outputs, row_format=True):
    """Signature outputs -> TF Serving's REST answer: `{"predictions": [...]}` (one object per
    batch element) for row-format requests, `{"outputs": {...}}` for columnar ones."""
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    if not row_format:
        return {"outputs": {k: v.tolist() for k, v in arrays.items()}}
    n = len(next(iter(arrays.values())))
    return {"predictions": [{k: v[i].tolist() for k, v in arrays.items()} for i in range(n)]}


def _unb64(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_unb64(v) for v in value]
    return value


def _to_array(key, value, spec):
    dtype = spec.dtype
    try:
        if dtype == tf.string:
            array = np.array(value, dtype=object)
            flat = array.reshape(-1)
            if not all(isinstance(v, bytes) for v in flat):
                raise ServingRequestError(
                    f"input {key!r} is a string input: send bytes as {{\"b64\": \"...\"}} objects")
        else:
            array = np.array(value)
            if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
                raise ServingRequestError(
                    f"input {key!r} expects {dtype.name} numbers, got ragged or non-numeric values")
            if dtype.is_integer:
                if not np.all(np.mod(array, 1) == 0):
                    raise ServingRequestError(f"input {key!r} expects {dtype.name}, got non-integer values")
                if array.size and (array.min() < dtype.min or array.max() > dtype.max):
                    raise ServingRequestError(
                        f"input {key!r} expects {dtype.name}: values must be in [{dtype.min}, {dtype.max}]")
            array = array.astype(dtype.as_numpy_dtype)
    except ServingRequestError:
        raise
    except (TypeError, ValueError) as e:
        raise ServingRequestError(f"input {key!r}: cannot convert to {dtype.name}: {e}") from None
    return _check_shape(key, array, spec)


def _check_shape(key, array, spec):
    if not spec.shape.is_compatible_with(array.shape):
        raise ServingRequestError(
            f"input {key!r} has shape {list(array.shape)}, incompatible with the signature's "
            f"{spec.shape.as_list()} (None = any size)")
    return array
