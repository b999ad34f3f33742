"""Precision-recall curves as one PNG per class (matplotlib is the optional `plot` extra)."""

import os
import re


def plot_pr_curves(pr_data, output_dir):
    """Writes `pr_<class>.png` for every class that has a curve.

    Args:
      pr_data: {class name: {"recall": [D] array, "precision": [D] array, "ap": {metric:
        float}} or None}, i.e. `result["pr_curves"]` of VOCEvaluator or COCOEvaluator.
        None (a class without ground truth) is skipped.
      output_dir: folder for the PNGs, created if missing.
    Returns:
      list of written paths in class order; [] if matplotlib is not installed (one line is
      printed saying so, since plotting is optional and must not stop an evaluation).
    """
    try:
        import matplotlib  # noqa: PLC0415  optional (plot extra)
    except ImportError:
        print("matplotlib not installed: PR curves skipped")
        return []
    # Agg renders to files without a display (servers, CI); set before pyplot is imported.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  optional (plot extra), after matplotlib.use

    os.makedirs(output_dir, exist_ok=True)
    paths = []
    used_names = set()
    for name, curve in pr_data.items():
        if curve is None:
            continue
        path = os.path.join(output_dir, f"pr_{_file_stem(name, used_names)}.png")
        fig, ax = plt.subplots(figsize=(5, 5))
        try:
            ax.plot(curve["recall"], curve["precision"], drawstyle="steps-post")
            ax.set_xlim(0.0, 1.0)
            ax.set_ylim(0.0, 1.05)
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            aps = ", ".join(f"{metric} {ap:.4f}" for metric, ap in curve.get("ap", {}).items() if ap is not None)
            ax.set_title(f"{name}" + (f" ({aps})" if aps else ""))
            ax.grid(True, alpha=0.3)
            fig.savefig(path, dpi=80, bbox_inches="tight")
        finally:
            plt.close(fig)
        paths.append(path)
    return paths


def _file_stem(name, used_names):
    """A file-name-safe, unique stem for a class name ("traffic light" -> "traffic_light")."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"
    candidate, k = stem, 1
    while candidate in used_names:
        k += 1
        candidate = f"{stem}_{k}"
    used_names.add(candidate)
    return candidate
