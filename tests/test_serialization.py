"""get_config round trips of the package's own Keras objects (every class in refinedet_tf with
`get_config` / `register_keras_serializable`): L2Normalization and WarmupSchedule.

A round trip must give the same config and the same behaviour: the same output on a fixed
input after copying weights (a layer), the same learning rate at every step (a schedule). The
configs also go through JSON, as they do in a `.keras` file."""

import json

import keras
import numpy as np
import pytest

from refinedet_tf.layers import L2Normalization
from refinedet_tf.training.optimizer import WarmupSchedule, make_optimizer

# Two positions of 2 channels each: norms 5 and 13.
X = np.array([[[3.0, 4.0], [5.0, -12.0]]], np.float32)


def test_l2_normalization_by_hand():
    layer = L2Normalization(init_scale=10.0)
    np.testing.assert_allclose(layer(X), [[[6.0, 8.0], [50 / 13, -120 / 13]]], rtol=1e-6)


def test_l2_normalization_from_its_config_has_the_same_config_and_output():
    layer = L2Normalization(init_scale=8.0, epsilon=1e-6, name="conv5_3_l2norm")
    layer.build(X.shape)
    layer.scale.assign([2.0, -0.5])  # a trained scale, not the initial one
    config = json.loads(json.dumps(layer.get_config()))
    assert config["init_scale"] == 8.0 and config["epsilon"] == 1e-6 and config["name"] == "conv5_3_l2norm"
    clone = L2Normalization.from_config(config)
    assert clone.get_config() == layer.get_config()
    clone.build(X.shape)
    np.testing.assert_array_equal(clone.scale.numpy(), [8.0, 8.0])  # init_scale survived
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(X), layer(X))
    np.testing.assert_allclose(layer(X)[0, 0], [3 / 5 * 2.0, 4 / 5 * -0.5], rtol=1e-5)


def test_l2_normalization_found_by_its_registered_name():
    serialized = keras.saving.serialize_keras_object(L2Normalization(init_scale=10.0))
    assert serialized["registered_name"] == "refinedet_tf>L2Normalization"
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert isinstance(restored, L2Normalization) and restored.init_scale == 10.0


def test_model_with_l2_normalization_survives_a_keras_file(tmp_path):
    inputs = keras.Input((2, 2))
    model = keras.Model(inputs, L2Normalization(init_scale=20.0, name="l2norm")(inputs))
    model.get_layer("l2norm").scale.assign([1.5, 3.0])
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: the registration finds the class
    assert isinstance(loaded.get_layer("l2norm"), L2Normalization)
    np.testing.assert_array_equal(loaded(X), model(X))


SCHEDULES = {
    "multistep": dict(base_lr=0.01, total_steps=120, warmup_steps=10, schedule="multistep",
                      boundaries=(80, 100), gamma=0.5, warmup_start=0.2),
    "cosine": dict(base_lr=0.02, total_steps=100, warmup_steps=20, schedule="cosine", warmup_start=0.0),
}
# Before, at and after warm-up's end and each boundary, the last step and past it.
STEPS = [0, 1, 5, 10, 19, 20, 50, 79, 80, 99, 100, 119, 120, 150]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_warmup_schedule_from_its_config_gives_the_same_learning_rates(name):
    schedule = WarmupSchedule(**SCHEDULES[name])
    config = json.loads(json.dumps(schedule.get_config()))  # a JSON list where it was a tuple
    clone = WarmupSchedule.from_config(config)
    assert clone.get_config() == schedule.get_config()
    np.testing.assert_array_equal([float(clone(t)) for t in STEPS], [float(schedule(t)) for t in STEPS])


def test_warmup_schedule_hand_values_survive_the_round_trip():
    clone = WarmupSchedule.from_config(WarmupSchedule(**SCHEDULES["multistep"]).get_config())
    # Warm-up from 0.2 * 0.01 over 10 steps, then x0.5 at 80 and at 100.
    expected = {0: 0.002, 5: 0.006, 10: 0.01, 79: 0.01, 80: 0.005, 100: 0.0025, 150: 0.0025}
    for step, lr in expected.items():
        np.testing.assert_allclose(float(clone(step)), lr, rtol=1e-6, err_msg=f"step {step}")


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimizer_config_restores_the_schedule(optimizer):
    # What a .keras file keeps of the optimizer: its config, with the schedule by registered name.
    schedule = WarmupSchedule(**SCHEDULES["multistep"])
    original = make_optimizer(schedule, name=optimizer)
    config = json.loads(json.dumps(original.get_config()))
    assert config["learning_rate"]["registered_name"] == "refinedet_tf>WarmupSchedule"
    restored = type(original).from_config(config)
    # The learning rate the optimizer applies at a step (its iterations) past the first boundary.
    for opt in (original, restored):
        opt.iterations.assign(85)
    np.testing.assert_allclose(float(restored.learning_rate), 0.005, rtol=1e-6)
    assert float(restored.learning_rate) == float(original.learning_rate)
