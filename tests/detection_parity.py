"""What "our detections equal the reference's" means when the head outputs agree only to float
rounding — and a check of exactly that, which holds on any CPU.

Detections are a discontinuous function of the head outputs: a 1e-6 change in a score can move
it across a threshold or reorder two overlapping boxes in NMS, and a box decoded through
`exp(0.2 * tw)` of a large offset magnifies a 1e-6 change in `tw`. Another CPU (another oneDNN
kernel summing a convolution in another order) makes exactly such changes. So parity is stated
relative to the measured head difference `eps` (max |ours - reference| of each head):

1. Every detection on either side comes from one of *our* candidates (anchor a, class c) with a
   score within `score_tol` of ours and a box within the first-order error bound of its two-step
   decode (`box_tolerance`, which scales with the anchor, the refined anchor and the box). A
   wrong variance, a swapped coordinate or another anchor order leaves reference detections
   with no such candidate, which fails (tests/test_detection_parity.py shows each).
2. Both sides keep the same set of (anchor, class) among the detections above both sides'
   keep_top_k cut-off. The only differences allowed are *fragile* decisions: those within
   `eps` of a threshold the reference applies — ARM objectness (theta), the score threshold,
   the per-class pre-NMS top-k, an NMS IoU at the threshold, two overlapping boxes of one class
   whose scores are too close to order — and what such a flip suppresses or releases in turn.
3. Classes are identical (part of the candidate identity).

`assert_detections_agree` returns how many detections were excused as fragile, so that a test
can bound it: with eps at float rounding it is 0 or a handful out of 500.
"""

import numpy as np

import refinedet_tf

SAFETY = 2.0  # the bounds below are first order; double them for the second-order terms
SCORE_FLOOR = 1e-6  # float32 rounding of a softmax of inputs that agree exactly
BOX_FLOOR = 1e-6
# The heads' own parity tolerance (test_forward_parity.assert_close_to_scale).
MAX_RELATIVE_HEAD_ERROR = 1e-4


def head_error(ours, reference):
    """Max |ours - reference| per head, as floats."""
    return {k: float(np.max(np.abs(np.asarray(ours[k], np.float64) - np.asarray(reference[k], np.float64))))
            for k in ("arm_loc", "arm_conf", "odm_loc", "odm_conf")}


def _softmax(logits):
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _size(boxes_yxyx):
    return np.maximum(boxes_yxyx[:, 2] - boxes_yxyx[:, 0], boxes_yxyx[:, 3] - boxes_yxyx[:, 1])


def box_tolerance(anchors_yxyx, refined_yxyx, boxes_yxyx, odm_loc, variances, eps_loc):
    """Per-anchor bound on any coordinate's change when every offset moves by at most eps_loc.

    refined = decode(arm, anchor), box = decode(odm, refined) (box_coding.decode_boxes):
      d(box centre) <= v_c*a*eps + v_s*r*|u_c|*v_c*eps + v_c*r*eps   (anchor, refined size, offset)
      d(box size)/2 <= v_s*b*eps (two exp's, each d = v_s*size*eps, halved per side)
    with a, r, b the anchor's, refined anchor's and box's larger side and u the ODM offsets.

    Returns: [A] floats.
    """
    v_c, v_s = max(variances[:2]), max(variances[2:])
    a, r, b = _size(anchors_yxyx), _size(refined_yxyx), _size(boxes_yxyx)
    u = np.abs(odm_loc[:, :2]).max(axis=1)
    bound = eps_loc * (v_c * a + v_s * v_c * r * u + v_c * r + v_s * b)
    return SAFETY * bound + BOX_FLOOR * (1 + np.abs(boxes_yxyx).max(axis=1))


def _iou(box, boxes):
    """IoU of one yxyx box with [N, 4] (no +1, as the reference's NMS)."""
    h = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    w = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = h * w

    def area(b):
        return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)

    union = area(box) + area(boxes) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class _Candidates:
    """Our decoded candidates of one image, with the tolerances of their decisions."""

    def __init__(self, heads, anchors_yxyx, config, eps):
        decoded = refinedet_tf.decode({k: v[None] for k, v in heads.items()}, anchors_yxyx, config)
        self.boxes = decoded["boxes"].numpy()[0].astype(np.float64)
        refined = decoded["refined_anchors"].numpy()[0].astype(np.float64)
        self.objectness = _softmax(heads["arm_conf"])[:, 1]
        self.scores = _softmax(heads["odm_conf"])  # before the ARM filter: [A, C]
        self.config = config
        # Softmax is 1/2-Lipschitz per output in the max norm of its logits (row sums of its
        # Jacobian are 2 p (1 - p) <= 1/2); the two-class objectness moves by (1/4) * 2 eps.
        self.score_tol = SAFETY * 0.5 * eps["odm_conf"] + SCORE_FLOOR
        self.objectness_tol = SAFETY * 0.5 * eps["arm_conf"] + SCORE_FLOOR
        self.box_tol = box_tolerance(np.asarray(anchors_yxyx, np.float64), refined, self.boxes,
                                     np.asarray(heads["odm_loc"], np.float64), config.variances,
                                     max(eps["arm_loc"], eps["odm_loc"]))
        # The ARM filter and score threshold as the reference applies them, widened by the
        # tolerance: anchors within it of a threshold are candidates on one side only.
        self.live = self.objectness[:, None] > config.objectness_threshold - self.objectness_tol
        self.live = self.live & (self.scores > config.score_threshold - self.score_tol)
        self.live[:, 0] = False

    def find(self, cls, score, box_yxyx):
        """The anchor whose class-`cls` candidate is this detection, or None."""
        anchors = np.flatnonzero(self.live[:, cls] & (np.abs(self.scores[:, cls] - score) <= self.score_tol))
        if len(anchors) == 0:
            return None
        error = np.abs(self.boxes[anchors] - box_yxyx).max(axis=1)
        ok = error <= self.box_tol[anchors]
        return int(anchors[ok][np.argmin(error[ok])]) if ok.any() else None

    def iou_tol(self, a, others):
        """How far IoU(a, other) can move: relative change of each side, summed (first order)."""
        def rel(i):
            side = np.minimum(self.boxes[i, 2] - self.boxes[i, 0], self.boxes[i, 3] - self.boxes[i, 1])
            return self.box_tol[i] / np.maximum(side, 1e-9)
        return SAFETY * 4 * (rel(a) + rel(others)) + 1e-6

    def fragile(self, a, cls, cutoffs):
        """Whether the keeping of candidate (a, cls) is decided within the tolerance."""
        cfg, s = self.config, self.scores[a, cls]
        if abs(self.objectness[a] - cfg.objectness_threshold) <= self.objectness_tol:
            return "ARM objectness at theta"
        if any(abs(s - t) <= self.score_tol for t in cutoffs[cls]):
            return "score at the score threshold or the per-class top-k"
        rivals = np.flatnonzero(self.live[:, cls] & (self.scores[:, cls] >= s - 2 * self.score_tol))
        rivals = rivals[rivals != a]
        iou = _iou(self.boxes[a], self.boxes[rivals])
        tol = self.iou_tol(a, rivals)
        if np.any(np.abs(iou - cfg.nms_iou) <= tol):
            return "IoU at the NMS threshold"
        close = np.abs(self.scores[rivals, cls] - s) <= 2 * self.score_tol
        if np.any(close & (iou > cfg.nms_iou - tol)):
            return "NMS order of two overlapping boxes with equal scores"
        return None


def _rows(classes, scores, boxes_yxyx):
    return [(int(c), float(s), np.asarray(b, np.float64)) for c, s, b in zip(classes, scores, boxes_yxyx)]


def assert_detections_agree(ours, our_heads, reference_rows, reference_heads, anchors_yxyx, config,
                            max_excused=None):
    """Asserts parity (module docstring) for one image; returns the number of excused detections.

    Args:
      ours: one image's detect() output as numpy (detection_boxes [K, 4] yxyx, detection_scores,
        detection_classes, num_detections).
      our_heads / reference_heads: that image's head outputs {arm_loc [A, 4] (ty, tx, th, tw),
        arm_conf [A, 2], odm_loc, odm_conf [A, C]}, both y-first.
      reference_rows: every detection the reference kept for the image, as (image, class, score,
        xmin, ymin, xmax, ymax) rows (x-first, as the golden files store them).
      max_excused: fail if more detections than this are excused as fragile.
    """
    eps = head_error(our_heads, reference_heads)
    for name, error in eps.items():
        scale = float(np.abs(reference_heads[name]).max())
        assert error <= MAX_RELATIVE_HEAD_ERROR * scale, (
            f"{name} differs by {error:.3g} (scale {scale:.3g}): more than float rounding, so "
            "there is no parity of detections to check")
    cand = _Candidates(our_heads, anchors_yxyx, config, eps)
    n = int(ours["num_detections"])
    our_rows = _rows(ours["detection_classes"][:n], ours["detection_scores"][:n], ours["detection_boxes"][:n])
    ref = reference_rows[np.argsort(-reference_rows[:, 2], kind="stable")]
    ref_rows = _rows(ref[:, 1].astype(int), ref[:, 2], ref[:, [4, 3, 6, 5]])
    assert np.all(np.diff(ours["detection_scores"][:n]) <= 0), "our detections are not sorted by score"

    # Per class, the thresholds a score is compared with: the score threshold and the score of
    # the pre-NMS top-k-th candidate (when a class has more candidates than that).
    filtered = np.where(cand.objectness[:, None] > config.objectness_threshold, cand.scores, 0.0)
    cutoffs = []
    for c in range(filtered.shape[1]):
        above = np.sort(filtered[filtered[:, c] > config.score_threshold, c])[::-1]
        kth = [above[config.pre_nms_top_k - 1]] if len(above) >= config.pre_nms_top_k else []
        cutoffs.append([config.score_threshold] + kth)

    def identify(rows, side):
        ids = []
        for k, (c, s, b) in enumerate(rows):
            a = cand.find(c, s, b)
            assert a is not None, (
                f"{side} detection {k} (class {c}, score {s:.7f}, box yxyx {np.round(b, 6).tolist()}) "
                f"matches none of our candidates within score {cand.score_tol:.2g} and the decode "
                f"bound of the box (head error {eps}): anchors, variances or coordinate order differ")
            ids.append((a, c))
        return ids

    # The reference's keep_top_k is a no-op (golden/README.md), so its list is complete: each of
    # ours must be in it, and it must be in ours above our last score (our keep_top_k cut).
    our_cut = our_rows[-1][1] if n == config.max_detections else -np.inf
    ref_rows = [r for r in ref_rows if r[1] >= our_cut - cand.score_tol]
    ours_ids, ref_ids = identify(our_rows, "our"), identify(ref_rows, "reference")
    must_keep = {i for i, r in zip(ref_ids, ref_rows) if r[1] > our_cut + cand.score_tol}
    assert len(set(ours_ids)) == len(ours_ids), "one candidate is detected twice in our output"
    differ = (set(ours_ids) - set(ref_ids)) | (must_keep - set(ours_ids))

    excused, reasons = set(), {}
    for a, c in differ:
        why = cand.fragile(a, c, cutoffs)
        if why:
            excused.add((a, c))
            reasons[(a, c)] = why
    # A flipped candidate suppresses (or releases) the lower boxes of its class it overlaps.
    changed = True
    while changed:
        changed = False
        for a, c in differ - excused:
            flipped = [b for b, cb in excused if cb == c]
            tol = cand.iou_tol(a, np.array(flipped)) if flipped else 0
            if flipped and np.any(_iou(cand.boxes[a], cand.boxes[flipped]) > config.nms_iou - tol):
                excused.add((a, c))
                reasons[(a, c)] = "suppressed or released by a fragile box"
                changed = True
    unexplained = differ - excused
    assert not unexplained, (
        f"{len(unexplained)} detections differ from the reference although no decision about them "
        f"is within the head error {eps}: " + "; ".join(
            f"anchor {a} class {c} score {cand.scores[a, c]:.7f} ({'ours' if (a, c) in ours_ids else 'reference'} only)"
            for a, c in sorted(unexplained)[:10]))
    if max_excused is not None:
        assert len(excused) <= max_excused, f"{len(excused)} fragile detections (> {max_excused}): {reasons}"
    return len(excused)


def assert_detection_lists_agree(ours, reference, box_atol, score_atol, rows=None, score_threshold=0.01,
                                 nms_iou=0.45, max_excused=2):
    """Two runtimes' final detections (batched detect() outputs: detection_boxes [B, K, 4],
    detection_scores, detection_classes, num_detections) agree, without their head outputs.

    The comparison is as sets, never rank by rank: rows whose scores are within `score_atol`
    swap places legitimately. Each reference detection clear of the cut-off (its last kept score
    when the list is full, the `rows`+1-th score when only the best `rows` are compared, else the
    score threshold) must have a partner in ours with the same class, a score within
    `score_atol` and a box within `box_atol`, and each of ours one in the reference. Unmatched
    rows are excused only where an NMS decision sits within the tolerance (an IoU within it of
    `nms_iou` with a box of its class in either list, or a same-class overlapping box of equal
    score), at most `max_excused` per image. Returns the number excused. (From outputs alone,
    a box that moved while its score did not looks like such an order flip of two overlapping
    boxes: `max_excused` bounds how often that can pass.)
    """
    num_ours = np.asarray(ours["num_detections"]).astype(int).reshape(-1)
    num_ref = np.asarray(reference["num_detections"]).astype(int).reshape(-1)
    capacity = np.asarray(reference["detection_scores"]).shape[1]
    excused_total = 0
    for b, (n_o, n_r) in enumerate(zip(num_ours, num_ref)):
        def side(d, n):
            return (np.asarray(d["detection_classes"])[b, :n].astype(int),
                    np.asarray(d["detection_scores"])[b, :n].astype(np.float64),
                    np.asarray(d["detection_boxes"])[b, :n].astype(np.float64))

        (c_o, s_o, x_o), (c_r, s_r, x_r) = side(ours, n_o), side(reference, n_r)
        assert np.all(np.diff(s_o) <= 0), f"image {b}: detections not sorted by score"
        if rows is None:  # padding rows are zero
            assert not np.any(np.asarray(ours["detection_boxes"])[b, n_o:]), f"image {b}: padding"
            assert not np.any(np.asarray(ours["detection_classes"])[b, n_o:]), f"image {b}: padding"
        cut_o = score_threshold if n_o < capacity else s_o[-1]
        cut_r = score_threshold if n_r < capacity else s_r[-1]
        if rows is not None:
            cut_o = s_o[rows] if n_o > rows else cut_o
            cut_r = s_r[rows] if n_r > rows else cut_r
            keep_o, keep_r = min(n_o, rows), min(n_r, rows)
        else:
            keep_o, keep_r = n_o, n_r
        # Greedy one-to-one pairing, closest box first, among same-class rows within tolerance.
        pairs = []
        for i in range(n_r):
            for j in range(n_o):
                if c_r[i] == c_o[j] and abs(s_r[i] - s_o[j]) <= score_atol:
                    error = np.abs(x_r[i] - x_o[j]).max()
                    if error <= box_atol:
                        pairs.append((error, i, j))
        used_r, used_o = set(), set()
        for _, i, j in sorted(pairs):
            if i not in used_r and j not in used_o:
                used_r.add(i)
                used_o.add(j)
        cut = max(cut_o, cut_r) + score_atol
        missing = [("reference", i) for i in range(keep_r) if i not in used_r and s_r[i] > cut]
        extra = [("ours", j) for j in range(keep_o) if j not in used_o and s_o[j] > cut]
        all_boxes = np.concatenate([x_r, x_o]) if n_r + n_o else np.zeros((0, 4))
        all_classes = np.concatenate([c_r, c_o])
        all_scores = np.concatenate([s_r, s_o])
        unexplained = []
        for name, k in missing + extra:
            cls, score, box = (c_r[k], s_r[k], x_r[k]) if name == "reference" else (c_o[k], s_o[k], x_o[k])
            same = all_classes == cls
            iou = _iou(box, all_boxes[same])
            sides = np.minimum(all_boxes[same, 2] - all_boxes[same, 0], all_boxes[same, 3] - all_boxes[same, 1])
            tol = 4 * box_atol / np.maximum(np.minimum(sides, min(box[2] - box[0], box[3] - box[1])), 1e-9)
            at_threshold = np.abs(iou - nms_iou) <= tol
            tied = (np.abs(all_scores[same] - score) <= 2 * score_atol) & (iou > nms_iou - tol) & (iou < 1 - 1e-9)
            if not np.any(at_threshold | tied):
                unexplained.append(f"{name} row {k} (class {cls}, score {score:.6f}, box {np.round(box, 5).tolist()})")
        assert not unexplained, f"image {b}: no partner within score {score_atol} / box {box_atol}: {unexplained}"
        excused = len(missing) + len(extra)
        assert excused <= max_excused, f"image {b}: {excused} detections excused as NMS-fragile (> {max_excused})"
        excused_total += excused
    return excused_total
