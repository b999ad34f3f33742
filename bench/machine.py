"""What machine a benchmark or a test session ran on (printed by every bench script and in the
pytest header).

The CPU's vector and matrix extensions are part of the answer: oneDNN picks its convolution
kernels by them (AVX2 on an AMD EPYC, AVX-512 or AMX on an Intel Xeon), so float32 results
differ in their last digits between machines and bf16 speed depends on them.
"""

import os
import platform

# The /proc/cpuinfo flags that decide which kernels oneDNN and XLA use, in the order printed.
EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni",
              "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


def cpu_model_and_flags():
    """(model name, set of flags) from /proc/cpuinfo; (platform.processor(), empty) elsewhere."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            fields = [line.partition(":") for line in f]
    except OSError:
        return model, flags
    models = [value.strip() for key, _, value in fields if key.strip() == "model name"]
    flag_lines = [value.split() for key, _, value in fields if key.strip() in ("flags", "Features")]
    return (models[0] if models else model), set(flag_lines[0] if flag_lines else ())


def describe_cpu():
    """e.g. 'AMD EPYC, x86_64 [avx avx2 fma f16c]' — model, architecture and extensions."""
    model, flags = cpu_model_and_flags()
    present = [name for name in EXTENSIONS if name in flags]
    return f"{model}, {platform.machine()} [{' '.join(present) or 'no vector extensions listed'}]"


def describe():
    import tensorflow as tf
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # The load says how much other processes took from the numbers (the machines are shared).
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")
    return (f"{describe_cpu()}, {os.cpu_count()} cores ({usable} usable{load}), "
            f"{'GPUs: ' + ', '.join(gpus) if gpus else 'no GPU'}, "
            f"TensorFlow {tf.__version__} (TF_ENABLE_ONEDNN_OPTS={onednn}), "
            f"Python {platform.python_version()}")


if __name__ == "__main__":
    print(describe())
