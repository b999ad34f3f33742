"""The moving average of the weights (--ema_decay): its decay warm-up by hand, the swap that
evaluation and saving use, its checkpoint and MirroredStrategy. A run that resumes with it:
test_training_runs.py::test_run_with_ema_resumes_its_average_and_saves_it."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf.training.ema import WeightAverage, decay_at

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _scalar_model():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    return model, model.trainable_variables[0]


def test_decay_warms_up_then_holds():
    assert decay_at(0.999, 0) == pytest.approx(0.1)
    assert decay_at(0.999, 1) == pytest.approx(2 / 11)
    assert decay_at(0.999, 1000) == pytest.approx(1001 / 1010)
    assert decay_at(0.5, 8) == 0.5 and decay_at(0.5, 9) == 0.5  # 9/18, then the cap


def test_average_by_hand():
    model, kernel = _scalar_model()
    kernel.assign([[0.0]])
    average = WeightAverage(model, decay=0.5)
    # d = 1/10, 2/11, 3/12: 0.1*0 + 0.9*10 = 9; (2*9 + 9*20)/11 = 18; 0.25*18 + 0.75*30 = 27.
    for value, expected in ((10.0, 9.0), (20.0, 18.0), (30.0, 27.0)):
        kernel.assign([[value]])
        average.update()
        np.testing.assert_allclose(average.averages[0].numpy(), [[expected]], rtol=1e-6)
    assert int(average.num_updates.numpy()) == 3
    average.reset()
    np.testing.assert_allclose(average.averages[0].numpy(), [[30.0]])
    assert int(average.num_updates.numpy()) == 0
    with pytest.raises(ValueError, match="ema_decay must be in"):
        WeightAverage(model, decay=1.0)


def test_swap_puts_back_every_weight_even_when_the_body_fails():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])
    average = WeightAverage(model, decay=0.9)
    for a in average.averages:
        a.assign(tf.fill(a.shape, 7.0))
    before = [w.numpy().copy() for w in model.weights]
    bn = model.layers[-1]
    with pytest.raises(RuntimeError):
        with average.swapped_in():
            for w in model.trainable_variables:
                np.testing.assert_array_equal(w.numpy(), np.full(w.shape, 7.0))
            bn.moving_mean.assign([5.0, 5.0, 5.0])  # what precise BN does inside the swap
            raise RuntimeError("evaluation failed")
    for w, value in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), value, err_msg=w.path)


def test_checkpoint_holds_the_average(tmp_path):
    model, kernel = _scalar_model()
    average = WeightAverage(model, decay=0.5)
    kernel.assign([[4.0]])
    average.update()
    path = tf.train.Checkpoint(model=model, **average.checkpoint_items()).save(str(tmp_path / "ckpt"))
    other_model, _ = _scalar_model()
    other = WeightAverage(other_model, decay=0.5)
    tf.train.Checkpoint(model=other_model, **other.checkpoint_items()).restore(path).assert_consumed()
    np.testing.assert_allclose(other.averages[0].numpy(), average.averages[0].numpy())
    assert int(other.num_updates.numpy()) == 1


MIRRORED_SCRIPT = r'''
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from refinedet_tf.training.ema import WeightAverage
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    kernel = model.trainable_variables[0]
    kernel.assign([[0.0]])
    average = WeightAverage(model, decay=0.5)
for value in (10.0, 20.0, 30.0):
    kernel.assign([[value]])
    average.update()
replicas = [float(np.ravel(v.numpy())[0]) for v in average.averages[0].values]
kernel.assign([[1.0]])
with average.swapped_in():
    inside = [float(np.ravel(v.numpy())[0]) for v in kernel.value.values]
after = [float(np.ravel(v.numpy())[0]) for v in kernel.value.values]
print("RESULT", replicas, inside, after)
'''


def test_average_under_mirrored_strategy_on_every_replica():
    done = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [out for out in done.stdout.splitlines() if out.startswith("RESULT")][-1]
    replicas, inside, after = json.loads("[" + line[len("RESULT "):].replace("] [", "], [") + "]")
    np.testing.assert_allclose(replicas, [27.0, 27.0], rtol=1e-6)
    np.testing.assert_allclose(inside, [27.0, 27.0], rtol=1e-6)
    assert after == [1.0, 1.0]
