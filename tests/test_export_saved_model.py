"""SavedModel export: signatures, parity with the Keras model in a fresh process, TF Serving
requests (REST and gRPC PredictRequest), and clear errors for bad input.

The helpers at the top (a small checkpoint with non-degenerate random weights, the Keras
reference detections, the comparison) are shared with the other export tests, which import
them from this module.
"""

import base64
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from detection_parity import assert_detection_lists_agree
from refinedet_tf import detect, generate_anchors, get_preset, preprocess_images
from refinedet_tf.checkpoints import load_model
from refinedet_tf.model import build_refinedet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_DETECTIONS = 20
# A pbtxt label map whose ids are not 1..3, so that tests see the id mapping at work.
LABEL_IDS = (0, 5, 9, 12)
LABEL_NAMES = ("background", "circle", "square", "star")
PBTXT = "".join(f'item {{ id: {i} name: "{n}" }}\n' for i, n in zip(LABEL_IDS[1:], LABEL_NAMES[1:]))


# ------------------------------------------------------------------------------ shared helpers
def small_config(**overrides):
    return get_preset("mobilenetv2_320", image_size=128, backbone_alpha=0.35, tcb_channels=64,
                      num_classes=4, **overrides)


def spread_weights(model, seed=0, input_scale=1.0):
    """He-normal kernels everywhere (heads scaled down) and small random biases.

    Keras' default initialization with identity BatchNorm gives a network whose outputs barely
    depend on the input: every anchor then has nearly the same score, and detections become
    ties whose order no two implementations agree on. These weights give distinct scores.
    """
    rng = np.random.RandomState(seed)
    heads = ("arm_loc", "arm_conf", "odm_loc", "odm_conf")
    first = True
    for layer in model.layers:
        for weight in layer.weights:
            shape = tuple(weight.shape)
            if weight.path.endswith("kernel"):
                if isinstance(layer, keras.layers.DepthwiseConv2D):
                    fan_in = shape[0] * shape[1]
                elif isinstance(layer, keras.layers.Conv2DTranspose):
                    fan_in = shape[0] * shape[1] * shape[3]
                else:
                    fan_in = int(np.prod(shape[:-1]))
                scale = 0.3 if layer.name.rsplit("_", 1)[0] in heads else 1.0
                if first:
                    scale *= input_scale
                first = False
                weight.assign(rng.normal(0.0, scale * np.sqrt(2.0 / fan_in), shape).astype(np.float32))
            elif weight.path.endswith("bias"):
                weight.assign(rng.normal(0.0, 0.1, shape).astype(np.float32))


def make_checkpoint(folder, config=None, seed=0, pbtxt=True):
    """A model_dir like train.py's: config.json + final.weights.h5 (+ labelmap.pbtxt)."""
    config = config or small_config()
    model = build_refinedet(config)
    spread_weights(model, seed, 1.0 / 64 if config.preprocessing == "caffe_bgr" else 1.0)
    os.makedirs(folder, exist_ok=True)
    model.save_weights(os.path.join(folder, "final.weights.h5"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(config.to_json())
    if pbtxt:
        with open(os.path.join(folder, "labelmap.pbtxt"), "w") as f:
            f.write(PBTXT)
    return str(folder)


def keras_detections(model, config, images, max_detections=MAX_DETECTIONS, label_ids=LABEL_IDS,
                     score_threshold=None, nms_iou=None):
    """The reference: warp resize (bilinear) + preprocess_images + model + postprocess.detect,
    classes mapped to label-map ids; numpy dict."""
    size = config.image_size
    x = tf.image.resize(tf.cast(images, tf.float32), [size, size], method="bilinear")
    x = preprocess_images(tf.clip_by_value(x, 0.0, 255.0), config)
    out = detect(model(x, training=False), generate_anchors(config), config,
                 max_detections=max_detections, score_threshold=score_threshold, nms_iou=nms_iou)
    out = {k: v.numpy() for k, v in out.items()}
    out["detection_classes"] = np.asarray(label_ids, np.float32)[out["detection_classes"]]
    out["detection_classes"][np.arange(max_detections)[None] >= out["num_detections"][:, None]] = 0
    return out


def assert_same_detections(ours, reference, box_atol=1e-4, score_atol=1e-5, rows=None):
    """Same detections as sets (detection_parity.assert_detection_lists_agree): rows whose
    scores differ by less than the tolerance may swap places, and rows at the cut-off may be
    exchanged; `rows` limits the comparison to the best rows (for quantized models)."""
    assert_detection_lists_agree(ours, reference, box_atol, score_atol, rows=rows)


def random_images(rng, shapes):
    return [rng.randint(0, 256, shape).astype(np.uint8) for shape in shapes]


def subprocess_env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")


def run_python(args, timeout=240):
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The command line's export of a small checkpoint (with --raw_scores), and the Keras model."""
    root = tmp_path_factory.mktemp("saved_model_export")
    checkpoint = make_checkpoint(root / "model")
    output = root / "exported"
    run_python(["export_saved_model.py", f"--checkpoint={checkpoint}", f"--output_dir={output}",
                "--version=3", f"--max_detections={MAX_DETECTIONS}", "--raw_scores"])
    model, config = load_model(checkpoint)
    return {"checkpoint": checkpoint, "output": str(output), "version_dir": str(output / "3"),
            "model": model, "config": config}


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported["version_dir"])


# ------------------------------------------------------------------------------------- layout
def test_layout_is_what_tf_serving_expects(exported):
    version_dir = exported["version_dir"]
    assert sorted(os.listdir(exported["output"])) == ["3"]  # no staging folder left behind
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
    assert os.path.isdir(os.path.join(version_dir, "variables"))
    assets = os.path.join(version_dir, "assets")
    with open(os.path.join(assets, "labelmap.txt")) as f:
        assert f.read().split() == list(LABEL_NAMES[1:])
    with open(os.path.join(assets, "labelmap.pbtxt")) as f:
        assert [int(i) for i in re.findall(r"id: (\d+)", f.read())] == list(LABEL_IDS[1:])
    with open(os.path.join(assets, "config.json")) as f:
        saved = json.load(f)
    assert saved["max_detections"] == MAX_DETECTIONS and saved["num_classes"] == 4


def test_existing_version_is_not_overwritten_without_the_flag(exported, tmp_path):
    from refinedet_tf.export import export_saved_model

    with pytest.raises(FileExistsError, match="--overwrite"):
        export_saved_model(exported["model"], exported["config"], exported["output"], version=3)
    with pytest.raises(ValueError, match="positive integer"):
        export_saved_model(exported["model"], exported["config"], str(tmp_path), version=0)


def test_label_map_of_another_size_is_rejected(exported, tmp_path):
    from refinedet_tf.data.label_map import LabelMap
    from refinedet_tf.export import export_saved_model

    with pytest.raises(ValueError, match="label map has 2 classes but the model"):
        export_saved_model(exported["model"], exported["config"], str(tmp_path),
                           label_map=LabelMap.from_names(["a", "b"]))


def test_saved_model_cli_lists_the_three_signatures(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    args = [cli] if os.path.exists(cli) else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    text = subprocess.run([*args, "show", "--all", "--dir", exported["version_dir"]],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120,
                          check=True).stdout
    blocks = dict(re.findall(r"signature_def\['(\w+)'\]:(.*?)(?=signature_def\[|\Z)", text, re.S))
    assert {"serving_default", "encoded_image", "tf_example"} <= set(blocks)
    expected_inputs = {"serving_default": ("DT_UINT8", "(-1, -1, -1, 3)"),
                       "encoded_image": ("DT_STRING", "(-1)"), "tf_example": ("DT_STRING", "(-1)")}
    for name, (dtype, shape) in expected_inputs.items():
        block = blocks[name]
        inputs = re.search(r"inputs\['input_tensor'\] tensor_info:\s+dtype: (\w+)\s+shape: (.*)", block)
        assert inputs and inputs.groups() == (dtype, shape), block
        outputs = dict(re.findall(r"outputs\['(\w+)'\] tensor_info:\s+dtype: \w+\s+shape: (.*)", block))
        assert outputs == {"detection_boxes": f"(-1, {MAX_DETECTIONS}, 4)",
                           "detection_scores": f"(-1, {MAX_DETECTIONS})",
                           "detection_classes": f"(-1, {MAX_DETECTIONS})",
                           "num_detections": "(-1)", "raw_detection_scores": "(-1, 1020, 4)"}
        assert re.findall(r"outputs\['\w+'\] tensor_info:\s+dtype: (\w+)", block) == ["DT_FLOAT"] * 5


# ------------------------------------------------------------------------------------- parity
_FRESH_PROCESS = textwrap.dedent("""
    import pickle, sys
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1])
    with open(sys.argv[2], "rb") as f:
        cases = pickle.load(f)
    results = []
    for signature, value in cases:
        out = loaded.signatures[signature](input_tensor=tf.constant(value))
        results.append({k: v.numpy() for k, v in out.items()})
    with open(sys.argv[3], "wb") as f:
        pickle.dump(results, f)
""")


def _tf_example(encoded):
    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_fresh_process_detections_equal_the_keras_model(exported, tmp_path):
    """uint8, encoded (JPEG and PNG) and tf.Example inputs of several sizes and batch sizes."""
    rng = np.random.RandomState(1)
    model, config = exported["model"], exported["config"]
    cases, references = [], []
    for shape in [(1, 128, 128, 3), (2, 97, 143, 3), (3, 240, 180, 3)]:
        images = rng.randint(0, 256, shape).astype(np.uint8)
        cases.append(("serving_default", images))
        references.append(keras_detections(model, config, images))
    files = random_images(rng, [(120, 90, 3), (64, 200, 3), (128, 128, 3)])
    encoded = [tf.io.encode_jpeg(files[0], quality=90).numpy(), tf.io.encode_png(files[1]).numpy(),
               tf.io.encode_jpeg(files[2]).numpy()]
    # The reference decodes the files itself (same decoder, so the same pixels).
    decoded = [tf.io.decode_image(e, channels=3).numpy() for e in encoded]
    per_image = [keras_detections(model, config, d[None]) for d in decoded]
    batched = {k: np.concatenate([p[k] for p in per_image]) for k in per_image[0]}
    cases += [("encoded_image", np.array(encoded, dtype=object)),
              ("encoded_image", np.array(encoded[1:2], dtype=object)),
              ("tf_example", np.array([_tf_example(e) for e in encoded], dtype=object))]
    references += [batched, per_image[1], batched]
    with open(tmp_path / "cases.pkl", "wb") as f:
        pickle.dump(cases, f)
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH_PROCESS)
    run_python([str(script), exported["version_dir"], str(tmp_path / "cases.pkl"),
                str(tmp_path / "results.pkl")])
    with open(tmp_path / "results.pkl", "rb") as f:
        results = pickle.load(f)
    for (signature, value), ours, reference in zip(cases, results, references):
        assert ours["detection_boxes"].shape == (len(value), MAX_DETECTIONS, 4), signature
        assert ours["num_detections"].dtype == np.float32 and ours["detection_classes"].dtype == np.float32
        assert set(ours["detection_classes"][ours["detection_classes"] > 0]) <= set(LABEL_IDS[1:])
        assert_same_detections(ours, reference)
    assert np.any(results[0]["num_detections"] > 0)


def test_raw_detection_scores_are_the_decoded_scores(exported, loaded):
    from refinedet_tf import decode

    images = np.random.RandomState(2).randint(0, 256, (1, 128, 128, 3)).astype(np.uint8)
    out = loaded.signatures["serving_default"](input_tensor=tf.constant(images))
    x = preprocess_images(tf.cast(images, tf.float32), exported["config"])
    expected = decode(exported["model"](x), generate_anchors(exported["config"]), exported["config"])
    np.testing.assert_allclose(out["raw_detection_scores"].numpy(), expected["scores"].numpy(), atol=1e-5)


def test_raw_scores_are_left_out_by_default(exported):
    from refinedet_tf.export import DetectionModule

    module = DetectionModule(exported["model"], exported["config"])
    spec = module.serving_default.get_concrete_function().structured_outputs
    assert sorted(spec) == ["detection_boxes", "detection_classes", "detection_scores", "num_detections"]


# ---------------------------------------------------------------------------------- TF Serving
def test_rest_and_predict_request_bodies_give_the_same_outputs(exported, loaded):
    from serving_emulation import outputs_to_rest_response, predict_request_to_inputs, rest_request_to_inputs

    signatures = loaded.signatures
    rng = np.random.RandomState(3)
    images = rng.randint(0, 256, (2, 70, 90, 3)).astype(np.uint8)
    jpeg = [tf.io.encode_jpeg(image).numpy() for image in images]
    direct = {
        "serving_default": signatures["serving_default"](input_tensor=tf.constant(images)),
        "encoded_image": signatures["encoded_image"](input_tensor=tf.constant(jpeg)),
        "tf_example": signatures["tf_example"](input_tensor=tf.constant([_tf_example(j) for j in jpeg])),
    }

    def b64(data):
        return {"b64": base64.b64encode(data).decode()}

    bodies = [
        {"instances": images.tolist()},  # signature_name defaults to serving_default
        {"signature_name": "serving_default", "instances": [{"input_tensor": i.tolist()} for i in images]},
        {"signature_name": "serving_default", "inputs": {"input_tensor": images.tolist()}},
        {"signature_name": "encoded_image", "instances": [b64(j) for j in jpeg]},
        {"signature_name": "encoded_image", "inputs": [b64(j) for j in jpeg]},
        {"signature_name": "tf_example", "instances": [{"input_tensor": b64(_tf_example(j))} for j in jpeg]},
    ]
    for body in bodies:
        name, inputs = rest_request_to_inputs(json.dumps(body), signatures)
        out = signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
        for key, value in direct[name].items():
            np.testing.assert_array_equal(out[key].numpy(), value.numpy(), err_msg=f"{body.keys()} {name}")
        response = outputs_to_rest_response(out, row_format="instances" in body)
        if "instances" in body:
            assert len(response["predictions"]) == 2
            np.testing.assert_allclose(response["predictions"][1]["detection_boxes"],
                                       direct[name]["detection_boxes"][1].numpy())
        else:
            np.testing.assert_allclose(response["outputs"]["num_detections"],
                                       direct[name]["num_detections"].numpy())
        json.dumps(response)

    predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    for name, value in [("serving_default", images), ("encoded_image", jpeg),
                        ("tf_example", [_tf_example(j) for j in jpeg])]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "refinedet"
        request.model_spec.signature_name = name
        request.inputs["input_tensor"].CopyFrom(tf.make_tensor_proto(value))
        got_name, inputs = predict_request_to_inputs(request, signatures)
        assert got_name == name
        out = signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
        for key, expected in direct[name].items():
            np.testing.assert_array_equal(out[key].numpy(), expected.numpy())


def test_serving_requests_of_the_wrong_kind_are_rejected(loaded):
    from serving_emulation import ServingRequestError, predict_request_to_inputs, rest_request_to_inputs

    signatures = loaded.signatures
    bad_bodies = [
        ({"signature_name": "detect", "instances": [[[[0, 0, 0]]]]}, "'detect' not found"),
        ({"instances": [[[[0.5, 0, 0]]]]}, "expects uint8, got non-integer"),
        ({"instances": [[[[300, 0, 0]]]]}, r"values must be in \[0, 255\]"),
        ({"instances": [[[0, 0, 0]]]}, r"shape \[1, 1, 3\], incompatible with the signature's \[None, None, None, 3\]"),
        ({"signature_name": "encoded_image", "instances": ["not base64 wrapped"]}, "b64"),
        ({"instances": [], "inputs": []}, "exactly one of"),
        ("{not json", "JSON parse error"),
    ]
    for body, message in bad_bodies:
        with pytest.raises(ServingRequestError, match=message):
            rest_request_to_inputs(body if isinstance(body, str) else json.dumps(body), signatures)
    predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    request = predict_pb2.PredictRequest()
    request.inputs["input_tensor"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 4, 4, 3), np.float32)))
    with pytest.raises(ServingRequestError, match="expects uint8 but float32 was provided"):
        predict_request_to_inputs(request, signatures)


# ----------------------------------------------------------------------------------- bad input
_JPEG = tf.io.encode_jpeg(np.full((32, 48, 3), 128, np.uint8)).numpy()
BAD_INPUTS = [
    ("serving_default", np.zeros((1, 8, 8, 3), np.float32),
     "was expected to be a uint8 tensor but is a float tensor"),
    ("serving_default", np.zeros((8, 8, 3), np.uint8),
     r"Shape of tensor input_tensor \[8,8,3\] is not compatible with expected shape \[\?,\?,\?,3\]"),
    ("serving_default", np.zeros((1, 8, 8, 4), np.uint8),
     r"Shape of tensor input_tensor \[1,8,8,4\] is not compatible with expected shape \[\?,\?,\?,3\]"),
    ("serving_default", np.zeros((1, 8, 8, 1), np.uint8), "is not compatible with expected shape"),
    ("serving_default", np.zeros((0, 8, 8, 3), np.uint8), r"input_tensor is an empty batch \(N = 0\)"),
    ("serving_default", np.zeros((1, 0, 8, 3), np.uint8), r"input_tensor has an empty image \(H or W = 0\)"),
    ("encoded_image", np.array([_JPEG, b"this is not an image"], dtype=object),
     r"input_tensor\[i\] is not a JPEG, PNG, GIF or BMP file .*i =\] \[1\]"),
    ("encoded_image", np.array([_JPEG[: len(_JPEG) // 2]], dtype=object), "Invalid JPEG data"),
    ("encoded_image", np.array([b""], dtype=object), r"input_tensor\[i\] is an empty string"),
    ("encoded_image", np.array([], dtype=object), "empty batch"),
    ("encoded_image", np.array([[_JPEG]], dtype=object), r"expected shape \[\?\]"),
    ("encoded_image", np.zeros((1, 8, 8, 3), np.uint8), "expected to be a string tensor but is a uint8 tensor"),
    ("tf_example", np.array([tf.train.Example().SerializeToString()], dtype=object),
     "image/encoded .* is required but could not be found"),
    ("tf_example", np.array([b"\x01garbage"], dtype=object), "Could not parse example input"),
]


@pytest.mark.parametrize("signature,value,message", BAD_INPUTS,
                         ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(BAD_INPUTS)])
def test_bad_input_gives_a_clear_error(loaded, signature, value, message):
    tensor = tf.constant(value) if value.dtype != object else tf.constant(value.tolist(), tf.string, value.shape)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures[signature](input_tensor=tensor)


def test_detector_rejects_numpy_arrays_of_another_dtype(exported):
    """A restored signature casts NumPy input to its dtype silently; the detector refuses."""
    from refinedet_tf.export import SavedModelDetector

    detector = SavedModelDetector(exported["output"])  # the base folder: highest version
    assert detector.path == exported["version_dir"]
    assert detector.class_names == list(LABEL_NAMES) and detector.label_ids == list(LABEL_IDS)
    with pytest.raises(TypeError, match="expects input_tensor uint8"):
        detector(np.zeros((1, 8, 8, 3), np.float32))
    out = detector(np.zeros((1, 8, 8, 3), np.uint8))
    assert out["detection_boxes"].shape == (1, MAX_DETECTIONS, 4)
