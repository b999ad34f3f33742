"""Tests of refinedet_tf.data.pipeline: padding, masks, max_boxes, determinism, distribution."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf.config import get_preset
from refinedet_tf.data.example import output_signature
from refinedet_tf.data.pipeline import make_dataset

CONFIG = get_preset("vgg16_320", image_size=64)


def make_examples(box_counts, seed=0):
    """Reader-contract examples with numpy-drawn sizes and boxes, as a list of dicts."""
    rng = np.random.RandomState(seed)
    examples = []
    for i, n in enumerate(box_counts):
        height, width = int(rng.randint(40, 130)), int(rng.randint(40, 130))
        lo = rng.uniform(0.0, 0.6, size=(n, 2))
        hi = lo + rng.uniform(0.1, 0.4, size=(n, 2))
        examples.append({
            "image": rng.randint(0, 256, size=(height, width, 3)).astype(np.uint8),
            "image_id": f"img_{i:03d}", "height": np.int32(height), "width": np.int32(width),
            "boxes": np.concatenate([lo, hi], axis=1).astype(np.float32),
            "classes": rng.randint(1, 21, size=n).astype(np.int32),
            "difficult": rng.rand(n) < 0.3, "is_crowd": np.zeros(n, bool)})
    return examples


def as_dataset(examples):
    return tf.data.Dataset.from_generator(lambda: iter(examples),
                                          output_signature=output_signature())


def test_eval_batches_pad_boxes_and_mask():
    counts = [0, 1, 3, 2, 4]
    examples = make_examples(counts)
    batches = list(make_dataset(as_dataset(examples), CONFIG, batch_size=2, training=False,
                                max_boxes=5))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]  # eval keeps the partial batch
    images = np.concatenate([b[0].numpy() for b in batches])
    targets = {k: np.concatenate([b[1][k].numpy() for b in batches]) for k in batches[0][1]}
    assert images.shape == (5, 64, 64, 3) and images.dtype == np.float32
    assert targets["boxes"].shape == (5, 5, 4) and targets["boxes"].dtype == np.float32
    assert targets["classes"].dtype == np.int32 and targets["mask"].dtype == bool
    np.testing.assert_array_equal(targets["mask"].sum(1), counts)
    np.testing.assert_array_equal(targets["num_truncated"], 0)
    for i, (example, n) in enumerate(zip(examples, counts)):
        np.testing.assert_array_equal(targets["boxes"][i, :n], example["boxes"])
        np.testing.assert_array_equal(targets["boxes"][i, n:], 0.0)
        np.testing.assert_array_equal(targets["classes"][i, :n], example["classes"])
        np.testing.assert_array_equal(targets["classes"][i, n:], 0)
        np.testing.assert_array_equal(targets["difficult"][i, :n], example["difficult"])
        assert not targets["difficult"][i, n:].any() and not targets["mask"][i, n:].any()
        assert targets["image_id"][i].decode() == example["image_id"]
        assert (targets["height"][i], targets["width"][i]) == example["image"].shape[:2]


def test_training_batches_are_static_padded_and_valid():
    examples = make_examples([0, 1, 2, 3, 4, 5, 1, 2], seed=1)
    dataset = make_dataset(as_dataset(examples), CONFIG, batch_size=4, training=True, seed=3,
                           max_boxes=6, shuffle_buffer=8)
    assert dataset.element_spec[0].shape.as_list() == [4, 64, 64, 3]
    assert dataset.element_spec[1]["boxes"].shape.as_list() == [4, 6, 4]
    for images, targets in dataset.take(5):  # repeats past the 8 examples
        mask = targets["mask"].numpy()
        boxes, classes = targets["boxes"].numpy(), targets["classes"].numpy()
        assert np.isfinite(images.numpy()).all()
        assert boxes.min() >= 0.0 and boxes.max() <= 1.0
        assert (boxes[~mask] == 0).all() and (classes[~mask] == 0).all()
        assert (classes[mask] >= 1).all()
        assert (boxes[mask][:, 2:] > boxes[mask][:, :2]).all()  # kept boxes are non-empty
        # Real boxes come first.
        assert (np.sort(mask, axis=1)[:, ::-1] == mask).all()


def test_too_many_boxes_raises_naming_the_image():
    examples = make_examples([2, 7, 1])
    dataset = make_dataset(as_dataset(examples), CONFIG, batch_size=1, training=False,
                           max_boxes=4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="img_001 has 7 boxes"):
        list(dataset)


def test_truncate_keeps_first_boxes_and_counts_the_rest():
    examples = make_examples([2, 7, 4])
    batches = list(make_dataset(as_dataset(examples), CONFIG, batch_size=3, training=False,
                                max_boxes=4, truncate_boxes=True))
    targets = batches[0][1]
    np.testing.assert_array_equal(targets["num_truncated"], [0, 3, 0])
    np.testing.assert_array_equal(targets["mask"].numpy().sum(1), [2, 4, 4])
    np.testing.assert_array_equal(targets["boxes"][1], examples[1]["boxes"][:4])
    # Training also counts what the augmentation left beyond max_boxes.
    dataset = make_dataset(as_dataset(make_examples([9] * 4)), CONFIG, batch_size=4,
                           training=True, max_boxes=2, truncate_boxes=True)
    total = sum(int(t["num_truncated"].numpy().sum()) for _, t in dataset.take(3))
    assert total > 0


def test_same_seed_same_batches_and_different_seed_differs():
    examples = make_examples([1, 2, 3, 0, 2, 1], seed=2)

    def batches(seed):
        dataset = make_dataset(as_dataset(examples), CONFIG, batch_size=3, training=True,
                               seed=seed, num_parallel_calls=2, shuffle_buffer=6)
        return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in dataset.take(3)]

    first, again, other = batches(1), batches(1), batches(2)
    for a, b in zip(first, again):
        for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
            assert x.dtype == y.dtype
            if x.dtype == object:  # strings
                assert x.tolist() == y.tolist()
            else:
                assert x.tobytes() == y.tobytes()  # bitwise
    assert not np.array_equal(first[0][0], other[0][0])


def test_image_with_all_boxes_dropped_gives_empty_mask_and_no_nan():
    example = make_examples([1])[0]
    example["boxes"] = np.array([[0.0, 0.0, 0.08, 0.08]], np.float32)  # a corner box
    dataset = make_dataset(as_dataset([example]), CONFIG, batch_size=1, training=True,
                           max_boxes=3, shuffle_buffer=1)
    empties = 0
    for images, targets in dataset.take(40):
        assert np.isfinite(images.numpy()).all()
        if not targets["mask"].numpy().any():
            empties += 1
            assert (targets["boxes"].numpy() == 0).all()
    assert empties > 0


def test_training_pipeline_graph_has_no_py_function():
    def make_example(i):
        n = tf.cast(i % 3, tf.int32)
        lo = tf.random.stateless_uniform([n, 2], tf.stack([i, i]), 0.0, 0.5)
        return {"image": tf.zeros([50 + tf.cast(i, tf.int32), 70, 3], tf.uint8),
                "image_id": tf.strings.as_string(i), "height": 50, "width": 70,
                "boxes": tf.concat([lo, lo + 0.3], 1), "classes": tf.ones([n], tf.int32),
                "difficult": tf.zeros([n], tf.bool), "is_crowd": tf.zeros([n], tf.bool)}

    dataset = make_dataset(tf.data.Dataset.range(4).map(make_example), CONFIG, batch_size=2,
                           training=True)
    graph_def = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops |= {node.op for node in function.node_def}
    assert "AdjustSaturation" in ops and "StatelessRandomUniformV2" in ops
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def test_bad_arguments_raise():
    dataset = as_dataset(make_examples([1]))
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(dataset, CONFIG, batch_size=0, training=False)
    with pytest.raises(ValueError, match="max_boxes"):
        make_dataset(dataset, CONFIG, batch_size=1, training=False, max_boxes=0)


DISTRIBUTED_SCRIPT = textwrap.dedent("""
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from refinedet_tf.config import get_preset
    from refinedet_tf.data.pipeline import loss_targets, make_distributed_dataset
    from tests.test_pipeline import as_dataset, make_examples

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    config = get_preset("vgg16_320", image_size=64)
    examples = make_examples([1, 2, 3, 0, 2, 1, 1, 2])
    dist = make_distributed_dataset(strategy, lambda: as_dataset(examples), config,
                                    global_batch_size=4, training=True, max_boxes=5,
                                    shuffle_buffer=8)
    iterator = iter(dist)
    images, targets = next(iterator)
    second_images, _ = next(iterator)
    resumed = make_distributed_dataset(strategy, lambda: as_dataset(examples), config,
                                       global_batch_size=4, training=True, max_boxes=5,
                                       shuffle_buffer=8, skip_steps=1, map_fn=loss_targets)
    resumed_images, resumed_targets = next(iter(resumed))
    same = [bool(tf.reduce_all(a == b)) for a, b in zip(
        strategy.experimental_local_results(second_images),
        strategy.experimental_local_results(resumed_images))]
    print("RESULT " + json.dumps({
        "resumed_equals_second": same,
        "resumed_targets": sorted(resumed_targets),
        "resumed_mask_dtype": strategy.experimental_local_results(resumed_targets["mask"])[0].dtype.name,
        "replicas": strategy.num_replicas_in_sync,
        "images": [x.shape.as_list() for x in strategy.experimental_local_results(images)],
        "boxes": [x.shape.as_list()
                  for x in strategy.experimental_local_results(targets["boxes"])],
        "devices": [x.device for x in strategy.experimental_local_results(images)]}))
""")


def test_distributed_dataset_gives_per_replica_batches():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", DISTRIBUTED_SCRIPT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["replicas"] == 2
    assert result["images"] == [[2, 64, 64, 3]] * 2
    assert result["boxes"] == [[2, 5, 4]] * 2
    assert len(set(result["devices"])) == 2
    assert result["resumed_equals_second"] == [True, True]
    assert result["resumed_targets"] == ["boxes", "classes", "mask"]
    assert result["resumed_mask_dtype"] == "float32"


def test_skip_batches_gives_the_stream_from_that_batch_on():
    examples = make_examples([1, 2, 3, 0, 2, 1, 1, 2, 3])
    kwargs = dict(batch_size=2, training=True, max_boxes=5, shuffle_buffer=4, seed=3)
    full = make_dataset(as_dataset(examples), CONFIG, **kwargs)
    expected = list(full.skip(5).take(3))  # crosses epochs: 9 examples, batches of 2
    resumed = list(make_dataset(as_dataset(examples), CONFIG, skip_batches=5, **kwargs).take(3))
    for (want_images, want), (got_images, got) in zip(expected, resumed):
        np.testing.assert_array_equal(got_images.numpy(), want_images.numpy())
        for key in ("boxes", "classes", "mask", "image_id"):
            np.testing.assert_array_equal(got[key].numpy(), want[key].numpy())
    with pytest.raises(ValueError, match="skip_batches"):
        make_dataset(as_dataset(examples), CONFIG, batch_size=2, training=False, skip_batches=1)


@pytest.mark.parametrize("preset", ["vgg16_320", "mobilenetv2_lite_192"])
def test_unpreprocess_inverts_preprocess(preset):
    from refinedet_tf.preprocessing import preprocess_images, unpreprocess_images

    config = get_preset(preset)
    rgb = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(np.float32)
    back = unpreprocess_images(preprocess_images(rgb, config), config).numpy()
    np.testing.assert_allclose(back, rgb, atol=1e-4)
