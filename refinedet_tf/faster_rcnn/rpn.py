"""The Region Proposal Network: its head (what the RPN predicts) and the proposal layer (how
RoIs are chosen from it), as Keras pieces of the Faster R-CNN model.

Head (py-faster-rcnn `models/pascal_voc/VGG16/faster_rcnn_end2end/train.prototxt`
rpn_conv/3x3, rpn_cls_score, rpn_bbox_pred; simple-faster-rcnn-pytorch
`model/region_proposal_network.py`): a 3x3 conv + ReLU, then two 1x1 convs predicting, per
anchor of each cell, 2 logits (background, object) and 4 offsets (ty, tx, th, tw). All three
are initialized N(0, 0.01) with zero biases (both references).

Channel layout (anchor-major, as RefineDet's heads): logit channel `a * 2 + k` (k = 0
background, 1 object), offset channel `a * 4 + coord`; simple-faster-rcnn's layout, so its
weights import unpermuted. py-faster-rcnn's Caffe `rpn_cls_score` is class-major instead (9
background channels, then 9 object channels: `k * 9 + a`) and its offsets are (dx, dy, dw, dh).
Flattening the NHWC maps gives rows ordered (feature row y, feature column x, anchor a): the
order of `faster_rcnn.anchors.grid_anchors`, so output row i pairs with anchor i.
"""

import keras
import tensorflow as tf

from refinedet_tf.faster_rcnn.anchors import grid_anchors
from refinedet_tf.faster_rcnn.proposals import generate_proposals

RPN_INIT_STD = 0.01  # py-faster-rcnn weight_filler gaussian std 0.01; simple-faster-rcnn normal_init(0, 0.01)


def _normal(std):
    return keras.initializers.RandomNormal(0.0, std)


def build_rpn(config, feature_shape):
    """The RPN head as a sub-model named "rpn".

    Args:
      config: a FasterRCNNConfig (rpn_channels, anchors_per_location).
      feature_shape: (h, w, C) of the backbone's map (stride 16).
    Returns:
      keras.Model: features [B, h, w, C] -> dict
        rpn_loc [B, A, 4] float32 (ty, tx, th, tw) of each anchor (unnormalized: unit variances),
        rpn_logits [B, A, 2] float32 (background, object),
      A = h * w * anchors_per_location in (y, x, a) order.
    """
    k = config.anchors_per_location
    features = keras.Input(feature_shape, name="rpn_features")
    x = keras.layers.Conv2D(config.rpn_channels, 3, padding="same", activation="relu",
                            kernel_initializer=_normal(RPN_INIT_STD), name="rpn_conv")(features)
    logits = keras.layers.Conv2D(2 * k, 1, kernel_initializer=_normal(RPN_INIT_STD), name="rpn_cls")(x)
    loc = keras.layers.Conv2D(4 * k, 1, kernel_initializer=_normal(RPN_INIT_STD), name="rpn_bbox")(x)
    # float32, so that the losses and the proposal layer stay float32 under mixed precision.
    outputs = {
        "rpn_loc": keras.layers.Reshape((-1, 4), dtype="float32", name="rpn_loc")(loc),
        "rpn_logits": keras.layers.Reshape((-1, 2), dtype="float32", name="rpn_logits")(logits),
    }
    return keras.Model(features, outputs, name="rpn")


@keras.saving.register_keras_serializable(package="refinedet_tf")
class ProposalLayer(keras.layers.Layer):
    """RPN outputs -> RoIs: `faster_rcnn.proposals.generate_proposals` on the canvas' anchors.

    The object probability is softmax(rpn_logits)[..., 1] (simple-faster-rcnn's rpn_fg_scores,
    py-faster-rcnn's rpn_cls_prob's object channels). The `training` flag picks the counts:
    train_pre/post_nms_top_n (12000 / 2000) when True, test_* (6000 / 300) otherwise, as the
    references' `self.training` / cfg TRAIN vs TEST does.

    Call: (rpn_loc [B, A, 4], rpn_logits [B, A, 2], image_info [B, 3] (height, width, scale))
      -> (rois_yxyx_px [B, R, 4] float32, descending object probability, rows past the valid
      count zero; rois_valid [B, R] bool). R = the post-NMS count of the mode.
    No gradient flows through the RoIs (both references compute them without backward).
    `anchors_yxyx_px` holds the anchors [A, 4] (numpy float32, pixels of the canvas).
    """

    def __init__(self, feature_hw, anchor_options, train_counts=(12000, 2000), test_counts=(6000, 300),
                 nms_iou=0.7, min_size=16.0, **kwargs):
        # Pixel coordinates must not be autocast to float16 under mixed precision.
        super().__init__(autocast=False, **kwargs)
        self.feature_hw = tuple(int(v) for v in feature_hw)
        # JSON (get_config) turns tuples into lists: back to tuples.
        self.anchor_options = {k: tuple(v) if isinstance(v, list) else v for k, v in anchor_options.items()}
        self.train_counts = tuple(int(v) for v in train_counts)
        self.test_counts = tuple(int(v) for v in test_counts)
        self.nms_iou = float(nms_iou)
        self.min_size = float(min_size)
        self.anchors_yxyx_px = grid_anchors(*self.feature_hw, **self.anchor_options)

    def call(self, rpn_loc, rpn_logits, image_info, training=None):
        pre_nms_top_n, post_nms_top_n = self.train_counts if training else self.test_counts
        object_scores = tf.nn.softmax(tf.cast(rpn_logits, tf.float32), axis=-1)[..., 1]
        proposals = generate_proposals(
            tf.cast(rpn_loc, tf.float32), object_scores, tf.constant(self.anchors_yxyx_px), image_info,
            training=bool(training), pre_nms_top_n=pre_nms_top_n, post_nms_top_n=post_nms_top_n,
            nms_iou_threshold=self.nms_iou, min_size=self.min_size)
        return proposals["rois_yxyx_px"], proposals["valid"]

    def compute_output_spec(self, rpn_loc, rpn_logits, image_info, training=None):
        # R depends on the mode (2000 training, 300 inference): left unknown in the symbolic graph.
        batch = rpn_loc.shape[0]
        return (keras.KerasTensor((batch, None, 4), dtype="float32"),
                keras.KerasTensor((batch, None), dtype="bool"))

    def get_config(self):
        options = {k: list(v) if isinstance(v, tuple) else v for k, v in self.anchor_options.items()}
        return {**super().get_config(), "feature_hw": list(self.feature_hw), "anchor_options": options,
                "train_counts": list(self.train_counts), "test_counts": list(self.test_counts),
                "nms_iou": self.nms_iou, "min_size": self.min_size}


def proposal_layer(config, feature_hw, name="proposals"):
    """The ProposalLayer of `config` for a feature map of `feature_hw` cells."""
    return ProposalLayer(feature_hw, config.anchor_options(), config.proposal_counts(True),
                         config.proposal_counts(False), config.rpn_nms_iou, config.rpn_min_size, name=name)
