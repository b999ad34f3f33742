"""The table a finished (or stopped) run prints: where everything it wrote is, and its figures."""

import os
import sys

from refinedet_tf import checkpoints


def print_summary(summary, stream=None):
    stream = stream or sys.stdout
    rows = [
        ("preset", summary["preset"]),
        ("steps", f"{summary['steps']} / {summary['total_steps']}" + (" (preempted)" if summary["preempted"] else "")),
        ("global batch", f"{summary['global_batch_size']} on {summary['replicas']} replica(s)"),
        ("final total loss", f"{summary['final_losses'].get('total') or float('nan'):.4f}"),
        ("images/s (last)", f"{summary['images_per_second'] or 0:.1f}"),
        ("wall time", f"{summary['wall_seconds']:.0f} s"),
    ]
    for record in summary["evaluations"]:
        value, raw = record.get("voc07"), record.get("voc07_raw")
        shown = "n/a" if value is None else f"{value:.4f}"
        if "voc07_raw" in record:
            shown += f" averaged weights, {'n/a' if raw is None else f'{raw:.4f}'} trained weights"
        rows.append((f"VOC07 mAP @ step {record['step']}", shown))
    if summary["best"]:
        rows.append(("best", f"{summary['best']['voc07']:.4f} at step {summary['best']['step']}"))
    model_dir = summary["model_dir"]
    rows += [
        ("checkpoint", summary["checkpoint"]),
        ("best weights", os.path.join(model_dir, checkpoints.BEST_WEIGHTS)),
        ("final weights", os.path.join(model_dir, checkpoints.FINAL_WEIGHTS)),
        ("TensorBoard", f"tensorboard --logdir {summary['tensorboard']}"),
        ("metrics", os.path.join(model_dir, "metrics.json")),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n" + "-" * (width + 50), file=stream)
    for k, v in rows:
        print(f"{k:<{width}}  {v}", file=stream)
    print("-" * (width + 50), file=stream, flush=True)
