"""Per-class AP table as plain text, for logs and the evaluate script."""

# Summary lines printed for a COCO result, in pycocotools' order.
_COCO_SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def format_ap_table(result, decimals=4):
    """Formats an evaluation result as a per-class table plus summary lines.

    Args:
      result: a dict from VOCEvaluator.evaluate(), COCOEvaluator.evaluate(), or both merged
        ({**voc_result, **coco_result}); its metric entries are the values holding
        "per_class" ("voc07", "voc12", "coco"), in the dict's order.
      decimals: digits after the point of AP values (fractions in [0, 1]).
    Returns:
      text: a header "class  #gt  <metric>...", one row per class ("n/a" where AP is
      undefined), then "voc07 mAP: ...", "voc12 mAP: ..." and/or "coco AP: ..., AP50: ..." lines.
      #gt is the first metric's ground-truth count (non-difficult for VOC, non-crowd for COCO).
    """
    metrics = [key for key, value in result.items() if isinstance(value, dict) and "per_class" in value]
    if not metrics:
        raise ValueError(f"no metric with 'per_class' in result (keys: {list(result)})")
    names = list(result[metrics[0]]["per_class"])
    num_gt = result[metrics[0]].get("num_gt", {})

    def fmt(value):
        return "n/a" if value is None else f"{value:.{decimals}f}"

    header = ["class", "#gt"] + metrics
    rows = [[name, str(num_gt.get(name, "?"))] + [fmt(result[m]["per_class"].get(name)) for m in metrics]
            for name in names]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

    def line(cells):
        # class name left-aligned, numbers right-aligned.
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [line(header), "  ".join("-" * w for w in widths)] + [line(row) for row in rows]
    for m in metrics:
        entry = result[m]
        if "mAP" in entry:
            lines.append(f"{m} mAP: {fmt(entry['mAP'])}")
        else:
            lines.append(f"{m} " + ", ".join(f"{k}: {fmt(entry.get(k))}" for k in _COCO_SUMMARY if k in entry))
    return "\n".join(lines)
