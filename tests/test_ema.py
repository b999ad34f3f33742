"""The moving average of the weights (--ema_decay): its decay warm-up by hand, the swap that
evaluation and saving use, its checkpoint, MirroredStrategy, and a run that resumes with it."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf.training import run as run_lib
from refinedet_tf.training.ema import WeightAverage, decay_at
from training_helpers import tiny_dataset, tiny_options

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


def _train(data, model_dir, steps, **kwargs):
    """A tiny run with the average (in this process: the average's own arithmetic is checked
    from the checkpoints, so the run need not be bit-reproducible)."""
    return run_lib.train(tiny_options(data, model_dir, steps=steps, ema_decay=0.9, checkpoint_every=1,
                                      keep_checkpoints=5, seed=5, **kwargs))


def _checkpoint(model_dir, step):
    """-> (trained weights, averages, num_updates) of checkpoint `step`, in trainable order."""
    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints" / f"ckpt-{step}"))
    from refinedet_tf.checkpoints import load_model
    model, _ = load_model(str(model_dir / "checkpoints" / f"ckpt-{step}"))
    trained = [v.numpy() for v in model.trainable_variables]
    averages = [reader.get_tensor(f"weight_average/averages/{i}/.ATTRIBUTES/VARIABLE_VALUE")
                for i in range(len(trained))]
    return trained, averages, int(reader.get_tensor("weight_average/num_updates/.ATTRIBUTES/VARIABLE_VALUE"))


def test_run_with_ema_resumes_its_average_and_saves_it(tmp_path, capsys):
    from refinedet_tf.checkpoints import load_model

    data = tiny_dataset(tmp_path / "data")
    model_dir = tmp_path / "run"
    _train(data, model_dir, 2)
    capsys.readouterr()
    # A second run continues from checkpoint 2, and evaluates both weight sets at its end.
    summary = _train(data, model_dir, 4, val_data=data)
    out = capsys.readouterr().out
    assert "at step 2" in out and "with the averaged weights (trained weights:" in out
    assert summary == json.loads((model_dir / "metrics.json").read_text())
    assert summary["ema_decay"] == 0.9
    assert {"voc07", "voc07_raw"} <= set(summary["evaluations"][-1])

    # The resumed process continued the average it found in checkpoint 2, update by update:
    # A4 = d3 * (d2 * A2 + (1 - d2) * W3) + (1 - d3) * W4 with d_t = min(0.9, (1 + t) / (10 + t)).
    _, a2, n2 = _checkpoint(model_dir, 2)
    w3, _, _ = _checkpoint(model_dir, 3)
    w4, a4, n4 = _checkpoint(model_dir, 4)
    assert (n2, n4) == (2, 4)
    d2, d3 = decay_at(0.9, 2), decay_at(0.9, 3)
    for i, (old, x3, x4, new) in enumerate(zip(a2, w3, w4, a4)):
        expected = d3 * (d2 * old + (1 - d2) * x3) + (1 - d3) * x4
        np.testing.assert_allclose(new, expected, rtol=1e-5, atol=1e-6, err_msg=f"average {i}")

    # final.weights.h5 holds that average (with BatchNorm statistics recomputed for it), not
    # the trained weights the checkpoint holds.
    final, _ = load_model(str(model_dir / "final.weights.h5"))
    for variable, value in zip(final.trainable_variables, a4):
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-6, atol=1e-7, err_msg=variable.path)
    assert any(not np.allclose(a, b) for a, b in zip(w4, a4))
