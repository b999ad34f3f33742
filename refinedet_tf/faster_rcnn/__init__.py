"""Faster R-CNN (Ren et al., NeurIPS 2015), the library's second architecture: what is specific
to it (RPN, proposals, RoI sampling and pooling, its losses). Box coding, IoU, NMS, data,
training, evaluation and export are shared with RefineDet."""
