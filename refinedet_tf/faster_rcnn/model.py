"""Faster R-CNN assembled as in the paper's Fig. 2: conv layers -> RPN -> proposals -> RoI
pooling -> classifier; and its detection output.

    images [B, H, W, 3] --VGG16 conv1_1..conv5_3--> features [B, H/16, W/16, 512]
    features --rpn--> rpn_loc [B, A, 4], rpn_logits [B, A, 2]
    (rpn_loc, rpn_logits, image_info) --proposals--> rois_yxyx_px [B, R, 4], rois_valid [B, R]
    (features, rois) --roi_head--> roi_logits [B, R, C], roi_loc [B, R, C, 4]

A = (H/16)(W/16) * 9 anchors in (y, x, a) order; R = 2000 proposals per image when called with
training=True, 300 otherwise (config counts). Everything is in pixels of the padded canvas;
image_info = (height, width, scale) of the resized image inside it (py-faster-rcnn's im_info):
the proposals are clipped to that area and filtered at 16 * scale pixels.

Training cost. The model's own head outputs cover all R proposals (2000 with training=True),
which a training step does not need: the loss samples 128 RoIs per image and runs the
"roi_head" sub-model on them. Inside a `tf.function` the unused head branch is pruned (it has
no stateful op); run eagerly it is computed and discarded.
"""

import keras
import tensorflow as tf

from refinedet_tf import box_coding
from refinedet_tf.backbones.init import zero_residual_gammas
from refinedet_tf.faster_rcnn.anchors import grid_anchors
from refinedet_tf.faster_rcnn.head import build_roi_head
from refinedet_tf.faster_rcnn.rpn import build_rpn, proposal_layer
from refinedet_tf.layers import batch_norm_layers
from refinedet_tf.nms import class_aware_nms

# keras.applications' VGG16 layer names, so ImageNet weights map by name.
_VGG_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
# MobileNetV2's stride-16 map: the expansion before block 13's stride-2 depthwise conv (576 x
# alpha channels; the tap SSDLite takes), the richest stride-16 map.
_MOBILENET_V2_STRIDE_16 = "block_13_expand_relu"
# As refinedet_tf/model.py: keras.applications' 0.999 leaves the moving statistics of a
# short run from scratch wrong; 0.99 forgets their initial values within ~500 steps.
BATCH_NORM_MOMENTUM = 0.99


def vgg16_conv5_3(images, config):
    """VGG16 conv1_1 .. conv5_3, each + ReLU, max-pools after blocks 1-4 (no pool5): stride 16.

    The first `config.frozen_backbone_blocks` blocks are not trainable (conv1, conv2 in both
    references). ImageNet weights are loaded by `build_faster_rcnn` (`load_vgg16_imagenet`).

    Returns: [B, H/16, W/16, 512].
    """
    x = images
    for block, (channels, repeats) in enumerate(_VGG_BLOCKS, start=1):
        if block > 1:
            # 2x2/2, floor mode (torchvision) = ceil mode (Caffe) on sides that are multiples of 16.
            x = keras.layers.MaxPooling2D(2, 2, name=f"block{block - 1}_pool")(x)
        for i in range(1, repeats + 1):
            x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name=f"block{block}_conv{i}",
                                    trainable=block > config.frozen_backbone_blocks)(x)
    return x


def load_vgg16_imagenet(model, backbone_weights):
    """Copies keras.applications' VGG16 ImageNet weights into a vgg16 Faster R-CNN: the 13 convs
    by name, and fc1 / fc2 into the head's fc6 / fc7 when their shapes agree (head_units 4096,
    roi_output_size 7), as py-faster-rcnn initializes fc6 / fc7 from the ImageNet model. Keras'
    fc1 reads pool5 flattened NHWC, the head's own order, so no permutation is needed.

    Args:
      model: from `build_faster_rcnn` with backbone "vgg16".
      backbone_weights: "imagenet" (downloaded) or the path of Keras' VGG16 weights file with
        its top (`vgg16_weights_tf_dim_ordering_tf_kernels.h5`).
    Returns:
      the names of the head layers that were initialized (empty when their shapes differ).
    """
    try:
        vgg = keras.applications.VGG16(include_top=True, weights=backbone_weights)
    except (ValueError, OSError) as error:
        raise ValueError(
            f"could not load VGG16 ImageNet weights from {backbone_weights!r}: expected 'imagenet' or the path of "
            f"Keras' VGG16 weights file with its top layers ({error})") from error
    for block, (_, repeats) in enumerate(_VGG_BLOCKS, start=1):
        for i in range(1, repeats + 1):
            name = f"block{block}_conv{i}"
            model.get_layer(name).set_weights(vgg.get_layer(name).get_weights())
    head = model.get_layer("roi_head")
    loaded = []
    for ours, theirs in (("fc6", "fc1"), ("fc7", "fc2")):
        values = vgg.get_layer(theirs).get_weights()
        if [w.shape for w in values] == [tuple(w.shape) for w in head.get_layer(ours).weights]:
            head.get_layer(ours).set_weights(values)
            loaded.append(ours)
    return loaded


def mobilenet_v2_stride16(images, config):
    """keras.applications' MobileNetV2 up to its stride-16 expansion (block_13_expand_relu).

    Returns: [B, H/16, W/16, 576 * alpha (rounded; 192 at alpha 0.35)].
    """
    weights = None if config.backbone_weights in (None, "none") else config.backbone_weights
    net = keras.applications.MobileNetV2(include_top=False, weights=weights, input_tensor=images,
                                         alpha=config.backbone_alpha)
    if weights is None:
        zero_residual_gammas(net, "_project_BN")  # from scratch: residual blocks start as identities
    return net.get_layer(_MOBILENET_V2_STRIDE_16).output


def canvas_hw_of(config, canvas_hw=None):
    """(height, width) of the canvas: `canvas_hw` or the config's square image_size."""
    height, width = canvas_hw if canvas_hw is not None else (config.image_size, config.image_size)
    stride = config.feature_stride
    if height % stride or width % stride or height < stride or width < stride:
        raise ValueError(f"canvas sides must be positive multiples of {stride}, got {(height, width)}")
    return int(height), int(width)


def faster_rcnn_anchors(config, canvas_hw=None):
    """The anchors of the model's feature map: np.ndarray [A, 4] float32, yxyx canvas pixels,
    row (y * w + x) * 9 + a for the (H/16) x (W/16) map (`faster_rcnn.anchors.grid_anchors`)."""
    height, width = canvas_hw_of(config, canvas_hw)
    stride = config.feature_stride
    return grid_anchors(height // stride, width // stride, **config.anchor_options())


def build_faster_rcnn(config, canvas_hw=None):
    """The Faster R-CNN network of a preset.

    Args:
      config: a FasterRCNNConfig.
      canvas_hw: (height, width) of a non-square canvas (multiples of 16); default
        (image_size, image_size). The variables do not depend on it: weights trained on one
        canvas load into a model built for another (the anchors and A change).
    Inputs (dict):
      images: float32 [B, H, W, 3] canvas, already preprocessed (`preprocessing.preprocess_images`),
        each image at the top left, padded bottom/right (with zeros after preprocessing).
      image_info: float32 [B, 3] (height, width, scale): the resized image's valid size in
        canvas pixels and the resize scale.
    Outputs (dict, float32 unless stated):
      features [B, H/16, W/16, C] the backbone map (conv5_3 after ReLU; compute dtype);
      rpn_loc [B, A, 4] (ty, tx, th, tw) of each anchor (`faster_rcnn_anchors`), unit variances;
      rpn_logits [B, A, 2] (background, object);
      rois_yxyx_px [B, R, 4] proposals, canvas pixels, descending object probability; zero rows
        past the valid count; rois_valid [B, R] bool;
      roi_logits [B, R, C] head logits (column 0 background);
      roi_loc [B, R, C, 4] class-specific (ty, tx, th, tw) of each RoI divided by box_stds;
      image_info [B, 3] the input, passed through for `detect`.
    Sub-models "rpn" and "roi_head" (`model.get_layer`) run the RPN and the head on other
    inputs; layer "proposals" holds `anchors_yxyx_px`.
    """
    height, width = canvas_hw_of(config, canvas_hw)
    images = keras.Input((height, width, 3), name="images")
    image_info = keras.Input((3,), name="image_info")
    if config.backbone == "vgg16":
        features = vgg16_conv5_3(images, config)
    else:
        features = mobilenet_v2_stride16(images, config)
    feature_shape = tuple(features.shape[1:])

    rpn = build_rpn(config, feature_shape)(features)
    rois, rois_valid = proposal_layer(config, feature_shape[:2])(rpn["rpn_loc"], rpn["rpn_logits"], image_info)
    head = build_roi_head(config, feature_shape)([features, rois, rois_valid])

    outputs = {"features": features, "rpn_loc": rpn["rpn_loc"], "rpn_logits": rpn["rpn_logits"],
               "rois_yxyx_px": rois, "rois_valid": rois_valid, "roi_logits": head["roi_logits"],
               "roi_loc": head["roi_loc"],
               "image_info": keras.layers.Identity(dtype="float32", name="image_info_out")(image_info)}
    model = keras.Model({"images": images, "image_info": image_info}, outputs, name=config.name)
    if config.backbone == "vgg16" and config.backbone_weights not in (None, "none"):
        load_vgg16_imagenet(model, config.backbone_weights)
    for layer in batch_norm_layers(model):
        layer.momentum = BATCH_NORM_MOMENTUM
    return model


# ---------------------------------------------------------------------------------------------
# Detection output (py-faster-rcnn lib/fast_rcnn/test.py `im_detect` + `apply_nms`;
# simple-faster-rcnn-pytorch `FasterRCNN.predict` + `_suppress`).


def decode_detections(outputs, config):
    """Per RoI and class: the decoded box, clipped to the image, and the class probability.

    boxes = decode(roi_loc * box_stds, rois) per class (no +1: simple-faster-rcnn's loc2bbox,
    the shared `box_coding.decode_boxes`, which also clamps th, tw at log(1000 / 16), a bound no
    trained head reaches), y clipped to [0, height], x to [0, width] of image_info;
    scores = softmax(roi_logits), 0 on rows where rois_valid is False.

    Args:
      outputs: dict with rois_yxyx_px [B, R, 4], rois_valid [B, R], roi_logits [B, R, C],
        roi_loc [B, R, C, 4], image_info [B, 3].
    Returns:
      dict boxes_yxyx_px [B, R, C, 4] float32 canvas pixels, scores [B, R, C] float32.
    """
    rois = tf.cast(outputs["rois_yxyx_px"], tf.float32)
    loc = tf.cast(outputs["roi_loc"], tf.float32)
    boxes = box_coding.decode_boxes(loc, rois[:, :, None, :], config.box_stds)
    boxes = tf.clip_by_value(boxes, 0.0, valid_size_yxyx(outputs["image_info"])[:, None, None, :])
    scores = tf.nn.softmax(tf.cast(outputs["roi_logits"], tf.float32), axis=-1)
    scores = tf.where(tf.cast(outputs["rois_valid"], tf.bool)[..., None], scores, 0.0)
    return {"boxes_yxyx_px": boxes, "scores": scores}


def _thresholds(config, max_detections, score_threshold, nms_iou):
    return (config.max_detections if max_detections is None else int(max_detections),
            config.score_threshold if score_threshold is None else float(score_threshold),
            config.nms_iou if nms_iou is None else float(nms_iou))


def _candidate_scores(decoded, config, score_threshold):
    """Object-class scores [B, R, C-1]: > score_threshold (strictly, as the references) and
    among the config.pre_nms_top_k best of their class (stable: lower RoI first), else 0."""
    scores = decoded["scores"][..., 1:]
    scores = tf.where(scores > score_threshold, scores, 0.0)
    num_rois = scores.shape[1]
    if num_rois is not None and config.pre_nms_top_k >= num_rois:
        return scores
    order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=1, stable=True)
    return tf.where(rank < config.pre_nms_top_k, scores, 0.0)


def valid_size_yxyx(image_info):
    """image_info [B, 3] (height, width, scale) -> float32 [B, 4] (height, width, height, width):
    the valid area's size in the yxyx layout, to scale or clip boxes by."""
    info = tf.cast(image_info, tf.float32)
    return tf.stack([info[:, 0], info[:, 1], info[:, 0], info[:, 1]], axis=-1)


def normalized_to_pixels(boxes_yxyx, image_info):
    """[B, N, 4] yxyx normalized to each image's valid area -> canvas pixels (`_normalized`'s
    inverse): what the targets are computed in."""
    return tf.cast(boxes_yxyx, tf.float32) * valid_size_yxyx(image_info)[:, None, :]


def _normalized(boxes_yxyx_px, image_info):
    """Canvas pixels -> [0, 1] of the image's valid area: y / height, x / width."""
    return boxes_yxyx_px / valid_size_yxyx(image_info)[:, None, :]


def detect(outputs, config, max_detections=None, score_threshold=None, nms_iou=None):
    """Final detections: per-class decode, clip, score > threshold, per-class NMS, best D.

    Per class 1..C-1: the RoIs whose probability is > score_threshold (0.05; among the
    pre_nms_top_k best of the class), greedy NMS suppressing IoU > nms_iou (0.3), then the
    max_detections (100) best over all classes (py-faster-rcnn `--num_dets`; simple-faster-rcnn
    has no cap). `tf.image.combined_non_max_suppression` (clip_boxes=False: pixel boxes) does the
    NMS, in canvas pixels as the references.

    Equal scores. combined_non_max_suppression visits equal scores in an unspecified (heap)
    order, while both references keep the lower RoI index (a stable sort; RoIPool maps
    different RoIs onto the same cells, so equal scores with different boxes do occur: the
    parity fixture's RoIs 209 and 222, overlapping in 5 classes). So the NMS is given, instead
    of the scores, the candidates' ranks in that stable order mapped to distinct values
    1 - (rank + 1) / (N + 1) (N = R (C-1) candidates), which it visits in exactly the
    references' order, and the output scores are read back from the ranks. The ranks also
    order the best D over the classes; equal scores of different classes rank the lower class
    first (as `detect_builtin`).

    Args:
      outputs: the model's outputs (rois_yxyx_px, rois_valid, roi_logits, roi_loc, image_info).
      config: FasterRCNNConfig (box_stds, pre_nms_top_k, and the defaults of the thresholds).
    Returns:
      dict detection_boxes [B, D, 4] float32 yxyx NORMALIZED BY THE IMAGE'S VALID SIZE
      (canvas pixels / (height, width) of image_info: [0, 1] spans the resized image, i.e. the
      original image, as RefineDet's outputs; padding is never inside), detection_scores [B, D],
      detection_classes [B, D] int32 (1..C-1, 0 in padding rows), num_detections [B] int32;
      descending score; D = max_detections; rows past num_detections are zero.
    """
    max_detections, score_threshold, nms_iou = _thresholds(config, max_detections, score_threshold, nms_iou)
    decoded = decode_detections(outputs, config)
    boxes = decoded["boxes_yxyx_px"][:, :, 1:, :]  # [B, R, C-1, 4]
    scores = _candidate_scores(decoded, config, score_threshold)  # [B, R, C-1]
    batch = tf.shape(scores)[0]
    num_rois, num_object_classes = scores.shape[1], scores.shape[2]
    if num_rois is None:
        raise ValueError("detect needs a static number of RoIs R")
    n = num_rois * num_object_classes
    if n >= 2**22:  # the ranks must survive float32 (error ~ n * 2^-24 << 0.5)
        raise ValueError(f"too many candidates for detect: R * (C - 1) = {n} (at most {2**22 - 1})")

    # Candidate c * R + r (class-major, as `detect_builtin`'s): equal scores rank lower class
    # first, then lower RoI.
    flat = tf.reshape(tf.transpose(scores, [0, 2, 1]), [batch, n])
    keyed = tf.where(flat > 0.0, flat, -1.0)
    order = tf.argsort(keyed, axis=1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=1, stable=True)
    rank_scores = 1.0 - tf.cast(rank + 1, tf.float32) / float(n + 1)
    rank_scores = tf.where(flat > 0.0, rank_scores, 0.0)
    rank_scores = tf.transpose(tf.reshape(rank_scores, [batch, num_object_classes, num_rois]), [0, 2, 1])
    nmsed = tf.image.combined_non_max_suppression(
        boxes, rank_scores,
        max_output_size_per_class=min(config.pre_nms_top_k, num_rois), max_total_size=max_detections,
        iou_threshold=nms_iou, score_threshold=0.5 / (n + 1), pad_per_class=False, clip_boxes=False)
    num = nmsed.valid_detections
    valid = tf.range(max_detections)[None, :] < num[:, None]
    out_rank = tf.cast(tf.round((1.0 - nmsed.nmsed_scores) * float(n + 1)), tf.int32) - 1
    out_rank = tf.clip_by_value(out_rank, 0, n - 1)
    sorted_scores = tf.gather(flat, order, batch_dims=1)
    out_scores = tf.where(valid, tf.gather(sorted_scores, out_rank, batch_dims=1), 0.0)
    return {
        "detection_boxes": tf.where(valid[..., None], _normalized(nmsed.nmsed_boxes, outputs["image_info"]), 0.0),
        "detection_scores": out_scores,
        "detection_classes": tf.where(valid, tf.cast(nmsed.nmsed_classes, tf.int32) + 1, 0),
        "num_detections": num,
    }


def detect_builtin(outputs, config, max_detections=None, score_threshold=None, nms_iou=None):
    """`detect` from TFLite built-in ops (and ops tf2onnx converts), for the TFLite/ONNX exports.

    Each image's R (C-1) candidates (RoI r's box for class c) go to `nms.class_aware_nms` as
    [R (C-1)] boxes whose score row is zero except in their own class's column; its per-class
    top-k then takes each class's own RoIs (stable: lower RoI first, as the references), its
    class offsets keep the classes apart, and one greedy NMS (NON_MAX_SUPPRESSION_V5, equal
    scores: lower index first) makes the per-class decisions. The offsets move boxes by up
    to (C-1) x (canvas side + 1) pixels, where float32 spacing is ~1e-3 px (C = 21, 1008
    canvas): an IoU within ~1e-4 of nms_iou may be decided otherwise than by `detect`.

    A batch whose static size is 1 (the TFLite export) runs it once; any other batch maps it
    over the images (`tf.map_fn`), as `postprocess.detect_builtin`.

    Args and returns: as `detect`.
    """
    max_detections, score_threshold, nms_iou = _thresholds(config, max_detections, score_threshold, nms_iou)
    decoded = decode_detections(outputs, config)
    boxes = decoded["boxes_yxyx_px"][:, :, 1:, :]  # [B, R, C-1, 4]
    scores = _candidate_scores(decoded, config, score_threshold)
    num_rois, num_object_classes = scores.shape[1], scores.shape[2]
    if num_rois is None:
        raise ValueError("detect_builtin needs a static number of RoIs R")
    n = num_rois * num_object_classes
    own_class = tf.equal(tf.tile(tf.range(num_object_classes), [num_rois])[:, None],
                         tf.range(num_object_classes)[None, :])  # [N, C-1]
    top_k = min(config.pre_nms_top_k, num_rois)

    def one_image(image_boxes, image_scores):
        candidate_scores = tf.where(own_class, tf.reshape(image_scores, [n, 1]), 0.0)
        return class_aware_nms(tf.reshape(image_boxes, [n, 4]), candidate_scores, max_detections, nms_iou,
                               score_threshold, top_k)

    names = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
    if boxes.shape[0] == 1:
        result = one_image(boxes[0], scores[0])
        result = {name: value[None] for name, value in result.items()}
    else:
        mapped = tf.map_fn(lambda args: tuple(one_image(*args)[name] for name in names), (boxes, scores),
                           fn_output_signature=(tf.float32, tf.float32, tf.int32, tf.int32))
        result = dict(zip(names, mapped))
    result["detection_boxes"] = _normalized(result["detection_boxes"], outputs["image_info"])
    return result
