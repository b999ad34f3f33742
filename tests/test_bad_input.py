"""Every bad-input case gives its documented outcome: a named error, or a counted skip/fix."""

import io
import json
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from conftest import make_voc, textured, write_image
from refinedet_tf.data import prepare, tfrecord
from refinedet_tf.data.coco import CocoReader
from refinedet_tf.data.report import BadExampleError
from refinedet_tf.data.voc import VocReader

BOX = ("cat", 5, 5, 20, 15)  # inside a 40 x 30 (W x H) image


def _voc(tmp_path, objects=(BOX,), image=None, **item):
    image = textured(30, 40) if image is None else image
    return make_voc(tmp_path / "voc", [dict(id="x", image=image, objects=list(objects), **item)])


def _skip(root, **kw):
    return VocReader(root, on_bad_example="skip", **kw)


def _jpeg_path(root):
    return os.path.join(root, "JPEGImages", "x.jpg")


# ---- Image files --------------------------------------------------------------------------------


def test_missing_image_file(tmp_path):
    root = _voc(tmp_path)
    os.remove(_jpeg_path(root))
    with pytest.raises(BadExampleError, match=r"x\.jpg: image file not found \(referenced by .*x\.xml\)"):
        VocReader(root)
    reader = _skip(root)
    assert len(reader) == 0 and reader.report.count("skipped") == 1
    assert reader.report.skipped[0].path == _jpeg_path(root)


def test_truncated_jpeg_fails_when_decoded(tmp_path):
    root = _voc(tmp_path)
    data = open(_jpeg_path(root), "rb").read()
    open(_jpeg_path(root), "wb").write(data[: len(data) // 2])
    reader = VocReader(root)  # the header is intact
    with pytest.raises(BadExampleError, match=r"x\.jpg: cannot decode image \(truncated or corrupt\)"):
        list(reader)
    skipping = _skip(root)
    assert list(skipping) == []
    assert skipping.report.count("skipped") == 1 and skipping.report.images == 0


def test_not_an_image(tmp_path):
    root = _voc(tmp_path)
    open(_jpeg_path(root), "wb").write(b"<html>not an image</html>")
    with pytest.raises(BadExampleError, match=r"x\.jpg: not an image \(JPEG, PNG, GIF or BMP expected"):
        VocReader(root)


def test_png_named_jpg_is_decoded_by_content(tmp_path):
    image = textured(30, 40)
    root = _voc(tmp_path, image=image, encode_as=".png")
    reader = VocReader(root)
    (e,) = list(reader)
    np.testing.assert_array_equal(e["image"], image)  # PNG is lossless
    assert reader.report.count("format_mismatch") == 1


def test_grayscale_becomes_rgb(tmp_path):
    grey = textured(30, 40)[:, :, 0]
    root = _voc(tmp_path, image=grey, ext=".png")
    reader = VocReader(root)
    (e,) = list(reader)
    assert e["image"].shape == (30, 40, 3)
    for c in range(3):
        np.testing.assert_array_equal(e["image"][:, :, c], grey)
    assert reader.report.count("grayscale") == 1


def test_cmyk_jpeg_is_decoded_and_reencoded_as_png(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    root = _voc(tmp_path)
    original = textured(30, 40)
    buffer = io.BytesIO()
    pil.fromarray(original).convert("CMYK").save(buffer, "JPEG", quality=95)
    open(_jpeg_path(root), "wb").write(buffer.getvalue())
    reader = VocReader(root)
    (e,) = list(reader)
    # Right colours (not Adobe-inverted), up to JPEG loss.
    assert np.abs(e["image"].astype(int) - original).mean() < 4
    assert reader.report.count("cmyk") == 1
    result = prepare.prepare(reader, str(tmp_path / "o.tfrecord"), progress=False)
    assert result.report.count("reencoded_png") == 1
    (back,) = list(tfrecord.TFRecordReader(result.shards))
    np.testing.assert_array_equal(back["image"], e["image"])  # the checked pixels, losslessly


def test_rgba_png_drops_alpha(tmp_path):
    rgb = textured(30, 40)
    rgba = np.dstack([rgb, np.full((30, 40), 9, np.uint8)])
    root = _voc(tmp_path, image=rgba, ext=".png")
    reader = VocReader(root)
    (e,) = list(reader)
    np.testing.assert_array_equal(e["image"], rgb)  # no compositing against the alpha
    assert reader.report.count("alpha") == 1


def test_16bit_png_is_scaled_to_8_bits(tmp_path):
    deep = textured(30, 40).astype(np.uint16) * 257 + 100
    root = _voc(tmp_path, image=deep, ext=".png")
    reader = VocReader(root)
    (e,) = list(reader)
    np.testing.assert_array_equal(e["image"], (deep >> 8).astype(np.uint8))
    assert reader.report.count("16bit") == 1
    result = prepare.prepare(reader, str(tmp_path / "o.tfrecord"), progress=False)
    (back,) = list(tfrecord.TFRecordReader(result.shards))
    np.testing.assert_array_equal(back["image"], e["image"])


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    app1 = b"Exif\x00\x00" + tiff + struct.pack("<I", 0)
    app0_end = 4 + struct.unpack(">H", jpeg[4:6])[0]  # SOI, then OpenCV's JFIF APP0
    return jpeg[:app0_end] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[app0_end:]


def test_exif_rotated_jpeg_keeps_stored_pixels_and_boxes(tmp_path):
    root = _voc(tmp_path)
    stored = open(_jpeg_path(root), "rb").read()
    open(_jpeg_path(root), "wb").write(_with_exif_orientation(stored, 6))  # "rotate 90 CW"
    reader = VocReader(root)
    (e,) = list(reader)
    assert e["image"].shape == (30, 40, 3)  # not rotated to 40 x 30
    np.testing.assert_array_equal(e["image"], tf.io.decode_jpeg(stored).numpy())
    np.testing.assert_allclose(e["boxes"], [[4 / 30, 4 / 40, 15 / 30, 20 / 40]])
    assert reader.report.count("exif_orientation") == 1


# ---- Annotations -------------------------------------------------------------------------------


def test_xml_size_differs_from_image_size(tmp_path):
    root = _voc(tmp_path, xml_size=(31, 40))
    with pytest.raises(BadExampleError, match=r"x\.xml says the image is 40x31 .* image file is 40x30"):
        VocReader(root)


def test_box_outside_image_is_clipped_or_an_error(tmp_path):
    root = _voc(tmp_path, objects=[("cat", 30, 20, 45, 33)])
    reader = VocReader(root)
    np.testing.assert_allclose(reader.metadata[0]["boxes"], [[19 / 30, 29 / 40, 1, 1]])
    assert reader.report.count("clipped_box") == 1
    outside = r"object 0 \(cat\) .* reaches outside the 40x30 image \(clip_boxes=False\)"
    with pytest.raises(BadExampleError, match=outside):
        VocReader(root, clip_boxes=False)


def test_box_entirely_outside_is_dropped_for_training_and_kept_for_evaluation(tmp_path):
    root = _voc(tmp_path, objects=[BOX, ("cat", 50, 5, 60, 10)])
    train = VocReader(root)  # a quirk: never an error, whatever on_bad_example says
    assert train.metadata[0]["classes"].tolist() == [1]
    assert train.report.count("small_box") == 1 and train.report.count("clipped_box") == 1
    evaluate = VocReader(root, purpose="evaluate")
    assert evaluate.metadata[0]["classes"].tolist() == [1, 1]  # voc_eval counts it
    np.testing.assert_allclose(evaluate.metadata[0]["boxes"][1], [4 / 30, 1, 10 / 30, 1])
    assert evaluate.report.count("degenerate_box") == 1


def test_one_pixel_voc_box_is_a_box(tmp_path):
    """VOC corners are 1-based inclusive: xmin == xmax is a box 1 pixel wide, which voc_eval
    counts. Training drops it (policy.py says why), evaluation keeps it; both list it."""
    root = _voc(tmp_path, objects=[BOX, ("cat", 7, 5, 7, 9)])
    train = VocReader(root)
    assert train.metadata[0]["boxes"].shape == (1, 4)  # the image stays, without that box
    assert train.report.count("small_box") == 1 and train.report.boxes == 1
    assert "object 1 (cat) (xmin=7, ymin=5, xmax=7, ymax=9) is 1 px" in train.report.issues[0].detail
    evaluate = VocReader(root, purpose="evaluate")
    np.testing.assert_allclose(evaluate.metadata[0]["boxes"][1], [4 / 30, 6 / 40, 9 / 30, 7 / 40], rtol=1e-6)
    assert evaluate.report.count("tiny_box") == 1 and evaluate.report.boxes == 2
    two_pixels = VocReader(_voc(tmp_path / "2", objects=[("cat", 7, 5, 8, 9)]))
    assert two_pixels.report.boxes == 1 and not two_pixels.report.issues


def test_inverted_box(tmp_path):
    root = _voc(tmp_path, objects=[("cat", 20, 5, 5, 15)])
    with pytest.raises(BadExampleError, match=r"object 0 \(cat\) has xmin > xmax"):
        VocReader(root)
    assert len(_skip(root)) == 0


@pytest.mark.parametrize("coords, message", [
    (("nan", 5, 20, 15), "non-finite coordinate"),
    ((-3, 5, 20, 15), "negative coordinate"),
    (("abc", 5, 20, 15), "<xmin> is not a number: 'abc'"),
])
def test_nan_negative_and_non_numeric_coordinates(tmp_path, coords, message):
    root = _voc(tmp_path, objects=[("cat", *coords)])
    with pytest.raises(BadExampleError, match=message):
        VocReader(root)


def test_unknown_class_names_class_and_file(tmp_path):
    root = _voc(tmp_path, objects=[("zebra", 5, 5, 20, 15)])
    with pytest.raises(BadExampleError, match=r"x\.xml: object 0 has class 'zebra', which is not in the label"):
        VocReader(root)


def test_malformed_xml_names_the_file(tmp_path):
    root = _voc(tmp_path, xml="<annotation><object><name>cat</name>")
    with pytest.raises(BadExampleError, match=r"Annotations/x\.xml: malformed XML"):
        VocReader(root)
    reader = _skip(root)
    assert reader.report.skipped[0].path.endswith("x.xml")


def test_image_without_objects_is_skipped_unless_kept(tmp_path):
    root = _voc(tmp_path, objects=[])
    reader = VocReader(root)
    assert len(reader) == 0 and reader.report.count("empty") == 1
    assert len(VocReader(root, keep_empty=True)) == 1


def test_skip_keeps_good_examples_and_counts_bad_ones(tmp_path):
    root = make_voc(tmp_path / "voc", [
        dict(id="good", image=textured(30, 40), objects=[BOX]),
        dict(id="bad", image=textured(30, 40), objects=[("cat", 20, 5, 5, 15)]),
        dict(id="gone", image=None, objects=[BOX], xml_size=(30, 40))])
    reader = _skip(root)
    assert reader.image_ids == ["good"]
    assert reader.report.count("skipped") == 2 and reader.report.images == 1


# ---- COCO JSON --------------------------------------------------------------------------------


def _coco(tmp_path, images, annotations):
    write_image(str(tmp_path / "1.jpg"), textured(30, 40))
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "cat"}]}))
    return str(path)


IMAGE = {"id": 1, "file_name": "1.jpg", "height": 30, "width": 40}


def _ann(id, image_id, bbox=(4, 4, 16, 11)):
    return {"id": id, "image_id": image_id, "category_id": 1, "bbox": list(bbox), "iscrowd": 0}


def test_coco_annotation_of_a_missing_image_id(tmp_path):
    path = _coco(tmp_path, [IMAGE], [_ann(1, 1), _ann(2, 99)])
    with pytest.raises(BadExampleError, match=r"c\.json: annotation 2 refers to image_id 99, which is not in"):
        CocoReader(path)
    reader = CocoReader(path, on_bad_example="skip")
    assert reader.report.count("skipped") == 1 and reader.report.boxes == 1


def test_coco_duplicate_image_ids(tmp_path):
    path = _coco(tmp_path, [IMAGE, dict(IMAGE)], [_ann(1, 1)])
    with pytest.raises(BadExampleError, match=r"c\.json: image id 1 is listed 2 times in 'images'"):
        CocoReader(path)
    assert len(CocoReader(path, on_bad_example="skip")) == 0


def test_coco_zero_width_box_is_dropped_for_training_and_counted_for_evaluation(tmp_path):
    path = _coco(tmp_path, [IMAGE], [_ann(1, 1), _ann(2, 1, (4, 4, 0, 11))])
    train = CocoReader(path)
    assert train.report.boxes == 1 and train.report.count("small_box") == 1
    evaluate = CocoReader(path, purpose="evaluate")
    assert evaluate.report.boxes == 2 and evaluate.report.count("degenerate_box") == 1
    np.testing.assert_allclose(evaluate.metadata[0]["boxes"][1], [4 / 30, 0.1, 15 / 30, 0.1])


@pytest.mark.parametrize("bbox, message", [
    ((4, 4, -3, 11), "xmin > xmax"),
    ((4, 4, "w", 11), "bbox must be 4 numbers"),
])
def test_coco_bad_boxes(tmp_path, bbox, message):
    path = _coco(tmp_path, [IMAGE], [_ann(1, 1, bbox)])
    with pytest.raises(BadExampleError, match=message):
        CocoReader(path)


def test_coco_size_mismatch_and_missing_file(tmp_path):
    path = _coco(tmp_path, [dict(IMAGE, width=41)], [_ann(1, 1)])
    with pytest.raises(BadExampleError, match=r"says the image is 41x30 .* image file is 40x30"):
        CocoReader(path)
    path = _coco(tmp_path, [dict(IMAGE, file_name="nope.jpg")], [_ann(1, 1)])
    with pytest.raises(BadExampleError, match=r"nope\.jpg: image file not found"):
        CocoReader(path)


def test_coco_malformed_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"images": [')
    with pytest.raises(BadExampleError, match=r"c\.json: malformed JSON"):
        CocoReader(str(path))


# ---- TFRecord ----------------------------------------------------------------------------------


def test_tfrecord_missing_required_key_is_named(tmp_path):
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"])),
        "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}))
    path = str(tmp_path / "bad.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        w.write(example.SerializeToString())
    with pytest.raises(BadExampleError, match=r"bad\.tfrecord: record 0 lacks the required feature 'image/width"):
        tfrecord.TFRecordReader(path)


def test_tfrecord_not_a_tfrecord_file(tmp_path):
    path = tmp_path / "junk.tfrecord"
    path.write_bytes(b"this is not a tfrecord file at all")
    with pytest.raises(BadExampleError, match=r"junk\.tfrecord: not a readable TFRecord file"):
        tfrecord.TFRecordReader(str(path))


# ---- The prepare command -----------------------------------------------------------------------


def test_prepare_stops_on_a_bad_example_and_leaves_no_shard(tmp_path, capsys):
    root = _voc(tmp_path)
    data = open(_jpeg_path(root), "rb").read()
    open(_jpeg_path(root), "wb").write(data[: len(data) // 2])
    out = str(tmp_path / "out" / "t-%05d-of-00002.tfrecord")
    status = prepare.run(["prepare", "--input", root, "--output", out, "--num_shards", "2", "--noprogress"])
    err = capsys.readouterr().err
    assert status == 1
    assert "x.jpg: cannot decode image (truncated or corrupt)" in err
    assert not [f for f in os.listdir(tmp_path / "out") if "tfrecord" in f]
    status = prepare.run(["prepare", "--input", root, "--output", out, "--num_shards", "2",
                          "--on_bad_example", "skip", "--noprogress"])
    assert status == 0
    report = json.load(open(tmp_path / "out" / "t.report.json"))
    assert report["images"] == 0 and report["counts"] == {"skipped": 1}
    assert "truncated" in report["issues"][0]["detail"]


def test_prepare_bad_flags(tmp_path, capsys):
    assert prepare.run(["prepare", "--output", "x"]) == 2
    assert "--input is required" in capsys.readouterr().err
    assert prepare.run(["prepare", "--input", "x", "--output", "x", "--on_bad_example", "maybe"]) == 2
    assert prepare.run(["prepare", "--input", str(tmp_path), "--output", "x"]) == 1
    assert "not a VOC folder (no Annotations/ inside)" in capsys.readouterr().err
    assert prepare.run(["prepare", "--help"]) == 0
    assert "--on_bad_example" in capsys.readouterr().out
