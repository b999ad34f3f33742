"""Why one device and 2 replicas disagree in float32: a numerical diagnosis, not a speed figure.

  python bench/replica_gradients.py [--image_size 128]

One training step's gradient of mobilenetv2_lite_192 (TCB BatchNorm on, from scratch, 4 noise
images holding 2, 1, 1 and 0 boxes) computed four ways:
float32 on one device; float32 on one device with the batch in another order (the same sum);
float32 on 2 MirroredStrategy replicas over logical CPUs with synchronized BatchNorm; float64 on
one device, the reference. Each is printed as max |g - g_float64| / max |g_float64|. Then the
ReLU inputs that float32 and float64 put on different sides of 0 (or 6), and float64's gradient
again with float32's values at just those elements: if it now equals float32's, those elements
are the whole difference. README.md ("Distributed training") has the numbers it printed.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import refinedet_tf  # noqa: E402
from refinedet_tf.architectures import RefineDet, sum_over_replicas  # noqa: E402
from refinedet_tf.training.strategy import synchronize_batch_norm  # noqa: E402

BOXES = ([[0.1, 0.1, 0.6, 0.5], [0.5, 0.5, 0.9, 0.95]], [[0.2, 0.3, 0.7, 0.8]], [[0.05, 0.05, 0.3, 0.4]], [])


def batch(size):
    images = np.random.default_rng(0).uniform(-1, 1, (4, size, size, 3)).astype(np.float32)
    targets = {"boxes": np.zeros((4, 2, 4), np.float32), "classes": np.zeros((4, 2), np.int32),
               "mask": np.zeros((4, 2), np.float32)}
    for i, rows in enumerate(BOXES):
        for j, box in enumerate(rows):
            targets["boxes"][i, j], targets["classes"][i, j], targets["mask"][i, j] = box, 1 + (i + j) % 6, 1.0
    return images, targets


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=128)
    args = parser.parse_args()
    config = refinedet_tf.get_preset("mobilenetv2_lite_192", image_size=args.image_size, num_classes=7)
    architecture = RefineDet(config)
    keras.utils.set_random_seed(0)
    initial = architecture.build_model().get_weights()
    images, targets = batch(args.image_size)

    def build(dtype, strategy=None):
        keras.config.set_dtype_policy(dtype)
        with strategy.scope() if strategy else tf.distribute.get_strategy().scope():
            model = architecture.build_model()
            model.set_weights([w.astype(dtype) for w in initial])
        keras.config.set_dtype_policy("float32")
        return model

    def gradients(model, images, targets):
        with tf.GradientTape() as tape:
            losses = architecture.losses(model, images, targets, sum_over_replicas)
        return tape.gradient(losses["total"], model.trainable_variables)

    def numpy(grads):
        return [np.asarray(g, np.float64) for g in grads]

    m32, m64 = build("float32"), build("float64")
    g32 = numpy(gradients(m32, images, targets))
    g64 = numpy(gradients(m64, images.astype(np.float64), targets))
    order = [2, 3, 0, 1]
    g32_reordered = numpy(gradients(m32, images[order], {k: v[order] for k, v in targets.items()}))

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    m2 = build("float32", strategy)
    synchronize_batch_norm(m2)
    halves = strategy.experimental_distribute_values_from_function(
        lambda context: (images[2 * context.replica_id_in_sync_group:][:2],
                         {k: v[2 * context.replica_id_in_sync_group:][:2] for k, v in targets.items()}))
    summed = tf.function(lambda: [strategy.reduce("sum", g, axis=None)
                                  for g in strategy.run(gradients, args=(m2, *halves))])
    g32_replicas = numpy(summed())

    def error(grads, reference=g64):
        return (max(np.abs(a - b).max() for a, b in zip(grads, reference))
                / max(np.abs(b).max() for b in reference))

    print(f"{config.name} at {args.image_size} px, one step's gradient, max |g - g_float64| / max |g_float64|:")
    print(f"  float32, one device                 {error(g32):.2e}")
    print(f"  float32, one device, batch 2,3,0,1  {error(g32_reordered):.2e}")
    print(f"  float32, 2 replicas                 {error(g32_replicas):.2e}")
    print(f"  float32, one device vs 2 replicas   {error(g32_replicas, g32):.2e}")

    def batch_norm_io(model, x):
        layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        values = keras.Model(model.input, [[layer.input, layer.output] for layer in layers])(x, training=True)
        return {layer.name: [np.asarray(v, np.float64) for v in io] for layer, io in zip(layers, values)}

    # BatchNorm's condition number is |x| / std: over few values per channel (the 1x1 maps hold
    # one per image) the inputs can lie close together, and their rounding grows by that much.
    b32, b64 = batch_norm_io(m32, images), batch_norm_io(m64, images.astype(np.float64))
    print("BatchNorm layers that multiply float32's relative error (vs float64) by more than 3:")
    for name, (x_in, x_out) in b32.items():
        y_in, y_out = b64[name]
        if not np.abs(y_out).max():
            continue  # a zero-initialized gamma: the output is beta alone
        e_in = np.abs(x_in - y_in).max() / np.abs(y_in).max()
        e_out = np.abs(x_out - y_out).max() / np.abs(y_out).max()
        if e_out > 3 * e_in:
            values = int(np.prod(y_in.shape[:-1]))
            ratio = np.max(np.abs(y_in.mean((0, 1, 2))) / np.sqrt(y_in.var((0, 1, 2)) + 1e-30))
            print(f"  {name}: {values} values per channel, max |mean| / std {ratio:.1f}, "
                  f"error {e_in:.1e} -> {e_out:.1e}")

    def relu_inputs(model, x):
        relus = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
        values = keras.Model(model.input, [layer.input for layer in relus])(x, training=True)
        return {layer.name: np.asarray(v, np.float64) for layer, v in zip(relus, values)}

    a32, a64 = relu_inputs(m32, images), relu_inputs(m64, images.astype(np.float64))
    flips = []
    for name, x in a32.items():
        y = a64[name]
        for index in np.argwhere(((x > 0) != (y > 0)) | ((x < 6) != (y < 6))):
            index = tuple(int(i) for i in index)
            flips.append((name, index, x[index], y[index]))
    print(f"ReLU inputs on different sides of a kink in float32 and float64 (one device): {len(flips)}")
    for name, index, x, y in flips:
        print(f"  {name} {index} of {a64[name].shape}: float32 {x:+.2e}, float64 {y:+.2e}")

    for chosen in [[f] for f in flips] + ([flips] if len(flips) > 1 else []):
        model = build("float64")
        for name, index, x, y in chosen:
            layer = model.get_layer(name)
            nudge = np.zeros(a64[name].shape)
            nudge[index] = x - y

            def call(inputs, *a, _call=layer.call, _nudge=tf.constant(nudge), **k):
                return _call(inputs + _nudge, *a, **k)
            layer.call = call
        forced = numpy(gradients(model, images.astype(np.float64), targets))
        names = ", ".join(name for name, *_ in chosen)
        print(f"float64 with float32's value at {names}: {error(forced):.2e} from float64, "
              f"{error(forced, g32):.2e} from float32")


if __name__ == "__main__":
    main()
