"""What machine a benchmark ran on (printed by every bench script)."""

import os
import platform


def describe():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # The load says how much other processes took from the numbers (the machines are shared).
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"{cpu}, {os.cpu_count()} cores ({usable} usable{load}), "
            f"{'GPUs: ' + ', '.join(gpus) if gpus else 'no GPU'}, "
            f"TensorFlow {tf.__version__}, Python {platform.python_version()}")
