"""The client side of an exported SavedModel: finding its version folder, loading it, calling
its signatures with inputs of the right dtype."""

from __future__ import annotations

import os

import tensorflow as tf

from refinedet_tf.export.contract import INPUT_NAME
from refinedet_tf.export.model_files import read_model_files


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


def signature_inputs(signature):
    """{input name: tf.TensorSpec} of a loaded signature (a ConcreteFunction)."""
    return dict(signature.structured_input_signature[1])
