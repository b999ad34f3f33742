"""Multi-replica training: MirroredStrategy over 2 logical CPUs and MultiWorkerMirroredStrategy
over 2 local processes (the way to test multi-device behaviour without GPUs)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from training_helpers import tiny_dataset

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}

MIRRORED_SCRIPT = r'''
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np, refinedet_tf
from refinedet_tf.training.optimizer import make_optimizer
from refinedet_tf.training.strategy import synchronize_batch_norm
from refinedet_tf.architectures import RefineDet
from refinedet_tf.training.trainer import DetectorTrainer

rng = np.random.default_rng(0)
images = rng.uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32)
# Replica 0 gets images 0-1 (3 boxes), replica 1 images 2-3 (1 box): their positive counts
# differ, so only a global normalizer gives the single-device gradient.
boxes = np.zeros((4, 2, 4), np.float32); classes = np.zeros((4, 2), np.int32); mask = np.zeros((4, 2), np.float32)
for i, rows in enumerate([[[0.1, 0.1, 0.6, 0.5], [0.5, 0.5, 0.9, 0.95]], [[0.2, 0.3, 0.7, 0.8]],
                          [[0.05, 0.05, 0.3, 0.4]], []]):
    for j, b in enumerate(rows):
        boxes[i, j] = b; classes[i, j] = 1 + (i + j) % 6; mask[i, j] = 1.0

class Record(keras.callbacks.Callback):
    def __init__(self): super().__init__(); self.logs = []
    def on_train_batch_end(self, batch, logs=None): self.logs.append({k: float(v) for k, v in logs.items()})

def run(strategy, config, initial, steps):
    with strategy.scope():
        detector = refinedet_tf.build_refinedet(config)
        detector.set_weights(initial)
        if strategy.num_replicas_in_sync > 1:
            synchronize_batch_norm(detector)
    trainer = DetectorTrainer(detector, RefineDet(config))  # outside the scope, as training/run.py
    with strategy.scope():
        trainer.compile(optimizer=make_optimizer(0.01, momentum=0.9, weight_decay=5e-4))
        record = Record()
        data = tf.data.Dataset.from_tensors((images, {"boxes": boxes, "classes": classes, "mask": mask})).repeat(steps)
        trainer.fit(data, epochs=1, verbose=0, callbacks=[record])
    return record.logs, detector.get_weights()

out = {}
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])  # one per process: collective keys
# VGG16 (no BatchNorm): two steps. MobileNetV2 (synchronized BatchNorm): one step, since a
# from-scratch BN net on 4 noise images amplifies float rounding chaotically afterwards.
for name, preset, steps in (("vgg16", "vgg16_320", 2), ("mobilenetv2", "mobilenetv2_lite_192", 1)):
    # Without the TCB's BatchNorm, at 64 px: with it (1x1 and 2x2 TCB maps, 2 images per
    # replica) the weights after one step differ by 8e-4 of scale, and at 128 px by 2% even
    # without it, while the losses agree to 1e-6. Not understood yet (a two-pass synchronized
    # variance did not change it); this checks the loss normalization and the backbone's
    # synchronized BN where they do agree.
    config = refinedet_tf.get_preset(preset, image_size=64, num_classes=7, tcb_batch_norm=False)
    keras.utils.set_random_seed(0)
    initial = refinedet_tf.build_refinedet(config).get_weights()
    one_logs, one_w = run(tf.distribute.get_strategy(), config, initial, steps)
    two_logs, two_w = run(mirrored, config, initial, steps)
    # Within 1e-5 of each tensor's scale, taken as at least 1 (so 1e-5 absolute for the small
    # tensors): zero-initialized BN betas that the next BN normalizes away get true gradients
    # of ~0 and move by float noise that the split batch statistics sum in another order.
    weight_diff = max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1.0)) for a, b in zip(one_w, two_w))
    update = max(float(np.max(np.abs(a - i))) for a, i in zip(one_w, initial))
    out[name] = {"one": one_logs, "two": two_logs, "weight_diff": weight_diff, "update": update}
json.dump(out, open(sys.argv[1], "w"))
'''

WORKER_SCRIPT = r'''
import sys
import keras, numpy as np
from refinedet_tf.training import run as run_lib
from training_helpers import tiny_options

class Dump(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        np.savez(sys.argv[3], *[v.numpy() for v in self.model.weights])

run_lib.train(tiny_options(sys.argv[1], sys.argv[2], strategy="multi_worker", steps=3, batch_size=4,
                           checkpoint_every=3, deterministic=True), extra_callbacks=[Dump()])
'''


def test_mirrored_two_replicas_equal_one_device_for_the_same_global_batch(tmp_path):
    out = tmp_path / "mirrored.json"
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    for name, r in result.items():
        assert len(r["one"]) == len(r["two"]) >= 1
        for one, two in zip(r["one"], r["two"]):
            for k in ("total", "arm_loc", "arm_conf", "odm_loc", "odm_conf", "num_pos"):
                np.testing.assert_allclose(two[k], one[k], rtol=1e-5, err_msg=f"{name} {k}")
        assert r["update"] > 1e-4, name  # the steps did change the weights
        assert r["weight_diff"] < 1e-5, name


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_two_processes_end_with_identical_weights(tmp_path):
    data = tiny_dataset(tmp_path)
    model_dir = tmp_path / "mw"
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    procs = []
    for index in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, str(script), data, str(model_dir),
                                       str(tmp_path / f"weights{index}.npz")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    # The chief wrote the run; both workers logged the same global losses at every step.
    steps = [json.loads(line) for line in (model_dir / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert (model_dir / "final.weights.h5").exists()
    assert not (model_dir / ".worker1").exists()
    with np.load(tmp_path / "weights0.npz") as w0, np.load(tmp_path / "weights1.npz") as w1:
        assert len(w0.files) == len(w1.files) > 100
        for k in w0.files:
            np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)
