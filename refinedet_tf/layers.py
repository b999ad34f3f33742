"""Layers that Keras does not provide, and finding layers inside a model."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="refinedet_tf")
class L2Normalization(keras.layers.Layer):
    """ParseNet/SSD L2Norm: x / (||x||_channels + 1e-10) * scale, scale learned per channel.

    Written here because Keras' UnitNormalization has no learned scale and puts its epsilon
    inside the root; the reference computes sqrt(sum x^2) + 1e-10, which we follow for parity.
    """

    def __init__(self, init_scale=20.0, epsilon=1e-10, **kwargs):
        super().__init__(**kwargs)
        self.init_scale = float(init_scale)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_scale), trainable=True)

    def call(self, inputs):
        norm = ops.sqrt(ops.sum(ops.square(inputs), axis=-1, keepdims=True)) + self.epsilon
        return inputs / norm * self.scale

    def get_config(self):
        return {**super().get_config(), "init_scale": self.init_scale, "epsilon": self.epsilon}


def find_layers(model, kinds):
    """Every layer of `model` that is an instance of `kinds` (a class or tuple of classes),
    nested models included, in layer order. (Keras' own recursive walk is private.)"""
    found = []
    for layer in model.layers:
        if isinstance(layer, kinds):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(find_layers(layer, kinds))
    return found


def batch_norm_layers(model):
    """Every BatchNormalization layer of `model`, nested models included."""
    return find_layers(model, keras.layers.BatchNormalization)
