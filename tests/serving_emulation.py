"""An emulation of what TF Serving does with a predict request, for the SavedModel tests.

TF Serving turns a REST body (`/v1/models/<m>:predict`, row or columnar JSON, `{"b64": ...}`
for bytes) or a gRPC `PredictRequest` into the inputs of one signature, rejects requests that
do not fit the signature, and turns the outputs into its REST answer. The tests run TF
Serving's steps here on the exported signatures, to show that its clients get the Keras
model's detections and clear errors, without a TF Serving server in the test environment.
It lives in tests/ because nothing but the tests sends requests this way: the library's
client is `refinedet_tf.export.saved_model_client.SavedModelDetector`.
"""

import base64
import json

import numpy as np
import tensorflow as tf

from refinedet_tf.export.saved_model_client import signature_inputs


class ServingRequestError(ValueError):
    """A request TF Serving would reject (HTTP 400 / INVALID_ARGUMENT)."""


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
