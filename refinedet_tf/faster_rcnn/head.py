"""The Fast R-CNN head: RoI pooling, fc6/fc7, class scores and class-specific box offsets.

py-faster-rcnn `models/pascal_voc/VGG16/faster_rcnn_end2end/train.prototxt` (roi_pool5
7x7 spatial_scale 0.0625, fc6 4096 + ReLU + dropout 0.5, fc7 likewise, cls_score N(0, 0.01),
bbox_pred 4 x 21 N(0, 0.001)); simple-faster-rcnn-pytorch `model/faster_rcnn_vgg16.py`
(`VGG16RoIHead`: the same layers, VGG's classifier without its dropouts).

The head is a sub-model ("roi_head") of features, RoIs and their mask, so that a training loss
can run it, with the same weights, on the sampled RoIs instead of the model's proposals:

    head = model.get_layer("roi_head")
    out = head([outputs["features"], sampled_rois_yxyx_px, sampled_valid], training=True)

fc6 reads the pooled [P, P, C] block flattened NHWC (index (y * P + x) * C + c); the references
flatten NCHW (c * P * P + y * P + x): `convert/faster_rcnn_pytorch.py` permutes fc6's columns.
"""

import keras

from refinedet_tf.faster_rcnn.roi_pooling import roi_align, roi_pool

CLS_SCORE_INIT_STD = 0.01  # both references
BBOX_PRED_INIT_STD = 0.001  # both references


@keras.saving.register_keras_serializable(package="refinedet_tf")
class RoIPooling(keras.layers.Layer):
    """`faster_rcnn.roi_pooling.roi_pool` (mode "pool") or `roi_align` (mode "align", aligned
    False, the original RoIAlign) as a layer.

    Call: (features [B, H, W, C], rois_yxyx_px [B, R, 4] canvas pixels, rois_valid [B, R] bool)
      -> [B, R, P, P, C], features' dtype; invalid rows are 0.
    """

    def __init__(self, mode="pool", output_size=7, spatial_scale=1.0 / 16.0, sampling_ratio=2, **kwargs):
        # Pixel coordinates must not be autocast to float16 under mixed precision.
        super().__init__(autocast=False, **kwargs)
        if mode not in ("pool", "align"):
            raise ValueError(f"RoIPooling mode must be 'pool' or 'align', got {mode!r}")
        self.mode = mode
        self.output_size = int(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)

    def call(self, features, rois_yxyx_px, rois_valid):
        if self.mode == "pool":
            return roi_pool(features, rois_yxyx_px, rois_valid, self.output_size, self.spatial_scale)
        return roi_align(features, rois_yxyx_px, rois_valid, self.output_size, self.spatial_scale,
                         self.sampling_ratio, aligned=False)

    def compute_output_shape(self, features_shape, rois_yxyx_px_shape, rois_valid_shape):
        size = self.output_size
        return (features_shape[0], rois_yxyx_px_shape[1], size, size, features_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "output_size": self.output_size,
                "spatial_scale": self.spatial_scale, "sampling_ratio": self.sampling_ratio}


def build_roi_head(config, feature_shape):
    """The RoI head as a sub-model named "roi_head".

    Args:
      config: a FasterRCNNConfig (roi_pooling, roi_output_size, head_units, head_dropout,
        num_classes).
      feature_shape: (h, w, C) of the backbone's map (static: RoI pooling needs it).
    Returns:
      keras.Model: [features [B, h, w, C], rois_yxyx_px [B, R, 4] float32 canvas pixels,
        rois_valid [B, R] bool] -> dict
        roi_logits [B, R, num_classes] float32 (column 0 background),
        roi_loc [B, R, num_classes, 4] float32 (ty, tx, th, tw) per class, divided by
          config.box_stds (the normalized space of the targets; class 0's are never used),
      any R; rows where rois_valid is False hold the head's output on zero features (mask them).
    """
    size = config.roi_output_size
    classes = config.num_classes
    features = keras.Input(feature_shape, name="head_features")
    rois = keras.Input((None, 4), name="head_rois_yxyx_px")
    valid = keras.Input((None,), dtype="bool", name="head_rois_valid")
    pooled = RoIPooling(config.roi_pooling, size, config.roi_spatial_scale, config.roi_align_sampling_ratio,
                        name="roi_pooling")(features, rois, valid)
    x = keras.layers.Reshape((-1, size * size * feature_shape[-1]), name="pool5_flat")(pooled)
    x = keras.layers.Dense(config.head_units, activation="relu", name="fc6")(x)
    x = keras.layers.Dropout(config.head_dropout, name="drop6")(x)
    x = keras.layers.Dense(config.head_units, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(config.head_dropout, name="drop7")(x)
    logits = keras.layers.Dense(classes, kernel_initializer=keras.initializers.RandomNormal(0.0, CLS_SCORE_INIT_STD),
                                dtype="float32", name="cls_score")(x)
    loc = keras.layers.Dense(4 * classes, kernel_initializer=keras.initializers.RandomNormal(0.0, BBOX_PRED_INIT_STD),
                             dtype="float32", name="bbox_pred")(x)
    # Column class * 4 + coord (both references' layout) -> [..., class, coord].
    loc = keras.layers.Reshape((-1, classes, 4), dtype="float32", name="roi_loc")(loc)
    return keras.Model([features, rois, valid], {"roi_logits": logits, "roi_loc": loc}, name="roi_head")
