"""The one box drawer (predict.py's pictures, TensorBoard's validation images)."""

import numpy as np

from refinedet_tf.drawing import class_colour, draw_boxes, draw_ground_truth_and_detections
from refinedet_tf.faster_rcnn.config import faster_rcnn_preset


def test_a_box_is_drawn_where_its_normalized_corners_fall_and_the_input_is_untouched():
    image = np.zeros((20, 40, 3), np.uint8)
    drawn = draw_boxes(image, [[0.25, 0.25, 0.75, 0.75]], (255, 0, 0), thickness=1)
    assert not image.any()
    red = np.all(drawn == (255, 0, 0), axis=-1)
    # Corners (y, x) = (5, 10) and (15, 30): the outline, and nothing inside or outside it.
    assert red[5, 10:31].all() and red[15, 10:31].all() and red[5:16, 10].all() and red[5:16, 30].all()
    assert red.sum() == 2 * 21 + 2 * 9 and not drawn[6:15, 11:30].any()


def test_boxes_beyond_the_image_are_clipped_and_labels_get_a_tag_of_the_box_colour():
    image = np.full((60, 80, 3), 30, np.uint8)
    colours = [class_colour(1), class_colour(2)]
    assert colours[0] != colours[1]
    drawn = draw_boxes(image, [[-0.5, -0.5, 1.5, 1.5], [0.5, 0.1, 0.9, 0.6]], colours, labels=["a 0.90", "b 0.50"])
    assert np.all(drawn[0, :] == colours[0]) and np.all(drawn[:, -1] == colours[0])  # clipped to the border
    # The second box's tag sits above it (y 30), filled with its colour.
    assert np.sum(np.all(drawn[20:30, 8:40] == colours[1], axis=-1)) > 50


def test_batch_boxes_are_drawn_on_each_images_valid_area():
    # A 20 x 40 image on a 40 x 40 canvas (keep_aspect) and a stretched one: the same box,
    # normalized to the valid area, lands at rows 5-15 of the first and 10-30 of the second.
    config = faster_rcnn_preset("faster_rcnn_mobilenetv2_lite_256")  # "tf" preprocessing
    targets = {"boxes": np.array([[[0.25, 0.25, 0.75, 0.75]]], np.float32), "mask": np.ones((1, 1), bool)}
    detections = {"num_detections": [0], "detection_scores": np.zeros((1, 1)),
                  "detection_classes": np.zeros((1, 1), int), "detection_boxes": np.zeros((1, 1, 4))}
    canvas = np.zeros((1, 40, 40, 3), np.float32)
    keep_aspect = {"images": canvas, "image_info": np.array([[20, 40, 1.0]], np.float32)}
    for images, (y0, y1) in ((keep_aspect, (5, 15)), (canvas, (10, 30))):
        drawn, = draw_ground_truth_and_detections(images, targets, detections, config, ["bg"], limit=1)
        assert drawn.shape == (40, 40, 3)
        red = np.all(drawn == (1.0, 0.0, 0.0), axis=-1)
        rows = np.flatnonzero(red.any(axis=1))
        assert (rows.min(), rows.max()) == (y0, y1) and red[y0, 10:31].all()
