"""Data set health and anchor fit, before any training.

    python -m refinedet_tf.data.inspect --data path/to/VOC_folder --split train \\
        --preset mobilenetv2_lite_192 --output_dir inspect/raccoon

Reads VOC folders, COCO JSON or TFRecords (`--data`, `--split`, `--label_map`) with the
evaluation policy (every box the protocols count; quirks listed, data/policy.py), and prints
and writes to `--output_dir`:

  inspect.json       num_images, num_boxes, per_class (name -> boxes), bad (file, kind, reason
                     of each skipped or suspicious example), anchor_recall (overall, per class,
                     per size bucket), suggested_anchor_sizes and suggested_anchor_recall;
  box_sizes.png      histogram of box sizes (input pixels) against the preset's anchor sizes;
  aspect_ratios.png  histogram of box aspect ratios (w/h) against the anchors' ratios
                     (both need matplotlib, the `plot` extra; without it only the JSON is written).

Anchor recall counts the boxes training learns from: not difficult, at least 2 pixels on their
shorter side. A box counts when its best IoU with the preset's anchors (`--preset`, with
`--config field=value` overrides) is >= match_iou after the resize training applies.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import flags

from refinedet_tf import data as data_lib
from refinedet_tf.config import get_preset, parse_overrides
from refinedet_tf.data.anchor_fit import anchor_fit, box_sizes_pixels, suggest_anchor_sizes
from refinedet_tf.data.cli import parse_flags
from refinedet_tf.data.policy import MIN_TRAIN_BOX_PIXELS, ON_BAD_EXAMPLE, ON_BAD_EXAMPLE_HELP, box_sides_pixels

SUGGESTION_SAMPLE = 20_000  # boxes the anchor-size search scores each candidate on
LOW_RECALL = 0.9  # train.py warns below this


def trainable_boxes(metadata):
    """(boxes [N, 4], classes [N]) of the boxes training learns from: not difficult, shorter
    side >= MIN_TRAIN_BOX_PIXELS."""
    boxes, classes = [np.zeros((0, 4))], [np.zeros((0,), np.int64)]
    for meta in metadata:
        b = np.asarray(meta["boxes"], np.float64).reshape(-1, 4)
        keep = ~np.asarray(meta["difficult"], bool)
        keep &= box_sides_pixels(b, meta["height"], meta["width"]) >= MIN_TRAIN_BOX_PIXELS
        boxes.append(b[keep])
        classes.append(np.asarray(meta["classes"], np.int64)[keep])
    return np.concatenate(boxes), np.concatenate(classes)


def _sample(boxes, limit, seed=0):
    if len(boxes) <= limit:
        return boxes
    return boxes[np.random.default_rng(seed).choice(len(boxes), limit, replace=False)]


def check_anchors(config, metadata, class_names, sample=None, only_when_low=False):
    """-> (AnchorFit, suggested sizes, their recall). `sample` caps the boxes scored (None: all
    for the recall; the suggestion always scores at most SUGGESTION_SAMPLE). `only_when_low`
    (train.py's start-of-run check) skips the search for better sizes, 14 candidate anchor sets,
    when the recall is already LOW_RECALL or more: suggestion and its recall are then None."""
    boxes, classes = trainable_boxes(metadata)
    if sample is not None and len(boxes) > sample:
        index = np.random.default_rng(0).choice(len(boxes), sample, replace=False)
        boxes, classes = boxes[index], classes[index]
    fit = anchor_fit(config, boxes, classes, class_names)
    if only_when_low and (fit.recall is None or fit.recall >= LOW_RECALL):
        return fit, None, None
    suggested, recall = suggest_anchor_sizes(config, _sample(boxes, SUGGESTION_SAMPLE))
    return fit, suggested, recall


def anchor_warning(fit, suggested, suggested_recall):
    """The one line train.py prints when the anchors fit badly, else None. It proposes other
    sizes only when they match more boxes (by at least one point of recall)."""
    if fit.recall is None or fit.recall >= LOW_RECALL:
        return None
    line = (f"warning: only {fit.recall:.0%} of the {fit.num_boxes} training boxes overlap an anchor by "
            f"IoU >= {fit.match_iou:g}; ")
    if suggested_recall is not None and suggested_recall >= fit.recall + 0.01:
        sizes = ",".join(f"{s:g}" for s in suggested)
        line += f"--config anchor_sizes={sizes} gives {suggested_recall:.0%} "
    else:
        line += "no other anchor sizes at this preset's strides and ratios match more "
    return line + "(python -m refinedet_tf.data.inspect shows the details)"


def inspect_dataset(reader, config):
    """The inspect.json dict for a reader (read with the evaluation policy) and a config."""
    names = list(reader.label_map.names) if reader.label_map else None
    metadata = reader.metadata
    if names is None:
        top = max([int(np.max(m["classes"])) for m in metadata if len(m["classes"])] + [0])
        names = ["background"] + [f"class {c}" for c in range(1, top + 1)]
    report = reader.report
    fit, suggested, suggested_recall = check_anchors(config, metadata, names)
    return {
        "data": getattr(reader, "root", None) or getattr(reader, "annotation_file", None)
        or getattr(reader, "files", None),
        "format": reader.format,
        "preset": config.name, "image_size": config.image_size,
        "num_images": len(metadata),
        "num_boxes": int(sum(len(m["classes"]) for m in metadata)),
        "per_class": dict(sorted(report.per_class.items())),
        "issue_counts": report.counts(),
        "bad": [{"file": i.path, "kind": i.kind, "reason": i.detail} for i in report.issues],
        "anchor_recall": fit.to_dict(),
        "suggested_anchor_sizes": list(suggested),
        "suggested_anchor_recall": suggested_recall,
    }


def format_result(result):
    fit = result["anchor_recall"]
    lines = [f"{result['num_images']} images, {result['num_boxes']} boxes ({result['format']})"]
    lines += [f"  {name}: {n}" for name, n in result["per_class"].items()]
    for kind, n in result["issue_counts"].items():
        lines.append(f"  {kind}: {n}")
    for issue in result["bad"][:10]:
        lines.append(f"    [{issue['kind']}] {issue['file']}: {issue['reason']}")
    if len(result["bad"]) > 10:
        lines.append(f"    ... {len(result['bad']) - 10} more in inspect.json")
    sizes = ", ".join(f"{s:g}" for s in fit["anchor_sizes"])
    recall = "n/a" if fit["recall"] is None else f"{fit['recall']:.3f}"
    lines.append(f"anchors of {result['preset']} at {result['image_size']} px (sizes {sizes}; IoU >= "
                 f"{fit['match_iou']:g}): recall {recall} of {fit['num_boxes']} trainable boxes")
    for title, table in (("per size", fit["per_size"]), ("per class", fit["per_class"])):
        cells = [f"{k} {v['boxes']} boxes, {'n/a' if v['recall'] is None else format(v['recall'], '.3f')}"
                 for k, v in table.items()]
        lines.append(f"  {title}: " + "; ".join(cells))
    if result["suggested_anchor_recall"] is not None:
        lines.append("suggested: --config anchor_sizes=" + ",".join(f"{s:g}" for s in result["suggested_anchor_sizes"])
                     + f" (recall {result['suggested_anchor_recall']:.3f})")
    return "\n".join(lines)


def write_plots(result, metadata, config, output_dir):
    """box_sizes.png and aspect_ratios.png; [] without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415  optional (plot extra); Agg is chosen before pyplot loads
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415  optional (plot extra), after matplotlib.use
        import matplotlib.ticker  # noqa: PLC0415  optional (plot extra)
    except ImportError:
        return []
    boxes, _ = trainable_boxes(metadata)
    sizes = box_sizes_pixels(boxes, config.image_size)
    ratios = (boxes[:, 3] - boxes[:, 1]) / np.maximum(boxes[:, 2] - boxes[:, 0], 1e-12)
    written = []
    specs = [("box_sizes.png", sizes, config.anchor_sizes, "box size sqrt(h*w), input pixels", "anchor size"),
             ("aspect_ratios.png", ratios,
              sorted({1.0, *config.aspect_ratios, *(1 / r for r in config.aspect_ratios)}),
              "aspect ratio w/h (in the square input)", "anchor ratio")]
    for name, values, lines, xlabel, line_label in specs:
        figure, axis = plt.subplots(figsize=(6, 3.5))
        values = values[values > 0]
        if len(values):
            low, high = min(values.min(), min(lines)) / 1.5, max(values.max(), max(lines)) * 1.5
            axis.hist(values, bins=np.geomspace(low, high, 40), color="#4477aa")
        for k, x in enumerate(lines):
            axis.axvline(x, color="#cc3311", linestyle="--", label=line_label if k == 0 else None)
        axis.set_xscale("log")
        # Plain numbers at powers of two (log axes label minor ticks as overlapping "3x10^1").
        low, high = axis.get_xlim()
        ticks = [2.0 ** k for k in range(-6, 12) if low <= 2.0 ** k <= high]
        axis.set_xticks(ticks, [f"{t:g}" for t in ticks])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_xlabel(xlabel)
        axis.set_ylabel("boxes")
        axis.set_title(f"{result['num_boxes']} boxes vs {result['preset']} at {result['image_size']} px")
        axis.legend()
        figure.tight_layout()
        path = os.path.join(output_dir, name)
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def _define_flags(fv):
    flags.DEFINE_string("data", None, "VOC folder, COCO .json or TFRecord file/glob/folder", flag_values=fv)
    flags.DEFINE_string("split", None, "VOC split (ImageSets/Main/<split>.txt; default: all)", flag_values=fv)
    flags.DEFINE_string("label_map", None, "label map (default: the data set's own)", flag_values=fv)
    flags.DEFINE_string("preset", "mobilenetv2_lite_192", "the preset whose anchors are checked", flag_values=fv)
    flags.DEFINE_multi_string("config", [], "field=value overriding the preset (repeatable)", flag_values=fv)
    flags.DEFINE_string("output_dir", None, "where inspect.json and the PNGs go (default: print only)",
                        flag_values=fv)
    flags.DEFINE_enum("on_bad_example", "error", list(ON_BAD_EXAMPLE), ON_BAD_EXAMPLE_HELP, flag_values=fv)


def run(argv, stdout=None, stderr=None) -> int:
    """Runs the command with `argv` (argv[0] is the program name); returns the exit status."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    fv, status = parse_flags(argv, _define_flags, __doc__, ("data",), "inspect",
                             "python -m refinedet_tf.data.inspect --data ... [--output_dir ...]", stdout, stderr)
    if fv is None:
        return status
    try:
        fmt = data_lib.detect_format(fv.data)
        reader = data_lib.open_reader(fv.data, fmt, fv.split if fmt == "voc" else None, fv.label_map,
                                      on_bad_example=fv.on_bad_example, purpose="evaluate")
        overrides = parse_overrides(fv.config)
        if reader.label_map is not None:
            overrides.setdefault("num_classes", reader.label_map.num_classes)
        config = get_preset(fv.preset, **overrides)
        result = inspect_dataset(reader, config)
    except ValueError as e:  # BadExampleError included
        stderr.write(f"inspect: error: {e}\n")
        return 1
    stdout.write(format_result(result) + "\n")
    if fv.output_dir:
        os.makedirs(fv.output_dir, exist_ok=True)
        path = os.path.join(fv.output_dir, "inspect.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, sort_keys=True, default=str)
        written = [path] + write_plots(result, reader.metadata, config, fv.output_dir)
        stdout.write("wrote " + ", ".join(written) + "\n")
    return 0


def main():
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()
