"""Running an exported `.tflite` (and, for int8, the post-processing model beside it)."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from refinedet_tf.export.contract import OUTPUT_NAMES, resize_and_preprocess
from refinedet_tf.export.model_files import read_model_files
from refinedet_tf.export.tflite import INPUT_NAME, POSTPROCESS_FILE


def make_interpreter(model_path, num_threads=2):
    """LiteRT's interpreter (`ai-edge-litert`) when installed, else TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter as interpreter_class  # noqa: PLC0415  optional (export extra)
    except ImportError:
        interpreter_class = tf.lite.Interpreter
    interpreter = interpreter_class(model_path=model_path, num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


class TFLiteDetector:
    """Runs an exported `.tflite` (and, for int8, the post-processing model beside it).

    A model whose outputs are not the served ones (`contract.OUTPUT_NAMES`) is the int8
    network: its raw outputs feed `refinedet_postprocess.tflite`, whose inputs carry the same
    names, whatever the architecture calls them.

    Args:
      path: the .tflite file; `config.json` and `labelmap.txt` are read from its folder.
      num_threads: interpreter threads.
    Attributes: config; class_names and label_ids, indexed by contiguous class id (0 =
    background): detection_classes holds label ids.
    """

    def __init__(self, path, num_threads=2):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TFLite model not found: {path}")
        folder = os.path.dirname(os.path.abspath(path))
        self.config, self.class_names, self.label_ids = read_model_files(folder)
        self.path = path
        self.interpreter = make_interpreter(path, num_threads)
        self._runner = self.interpreter.get_signature_runner()
        outputs = self.interpreter.get_signature_list()["serving_default"]["outputs"]
        self._post = None
        if set(outputs) != set(OUTPUT_NAMES):
            post_path = os.path.join(folder, POSTPROCESS_FILE)
            if not os.path.isfile(post_path):
                raise FileNotFoundError(
                    f"{path} outputs the raw network outputs {sorted(outputs)}; its post-processing "
                    f"model {post_path} is missing")
            post = make_interpreter(post_path, num_threads)
            self._post_inputs = post.get_signature_list()["serving_default"]["inputs"]
            if set(self._post_inputs) != set(outputs):
                raise ValueError(f"{post_path} takes {sorted(self._post_inputs)} but {path} outputs "
                                 f"{sorted(outputs)}: the two files come from different exports")
            self._post = post.get_signature_runner()
            self._post_interpreter = post

    def run(self, images):
        """float32 [1, S, S, 3] preprocessed -> {output name: np.ndarray} (batch 1)."""
        images = np.asarray(images, np.float32)
        size = self.config.image_size
        if images.shape != (1, size, size, 3):
            raise ValueError(f"expected preprocessed images [1, {size}, {size}, 3], got {list(images.shape)}")
        outputs = self._runner(**{INPUT_NAME: images})
        if self._post is not None:
            outputs = self._post(**{name: outputs[name] for name in self._post_inputs})
        return {k: np.asarray(v) for k, v in outputs.items()}

    def __call__(self, image_rgb):
        """uint8 [H, W, 3] (or [1, H, W, 3]) RGB -> outputs for that one image (batch 1)."""
        image = np.asarray(image_rgb)
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[-1] != 3:
            raise ValueError(f"expected one RGB image [H, W, 3], got shape {list(np.shape(image_rgb))}")
        return self.run(resize_and_preprocess(image, self.config).numpy())
