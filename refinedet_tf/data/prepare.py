"""Converts a VOC folder or a COCO JSON into sharded TFRecords, checking every example.

    python -m refinedet_tf.data.prepare --format voc --input VOCdevkit/VOC2007 --split trainval \\
        --label_map data/voc_labelmap.txt --output out/voc07-trainval-%05d-of-00004.tfrecord \\
        --num_shards 4

`--output` is a printf pattern given (shard index) or (shard index, num_shards); without a `%`
it is the file itself (one shard) or a prefix (`<output>-00000-of-00004.tfrecord`). Next to
the shards go `<name>.report.json` (the report below) and `<name>.labelmap.pbtxt` (the label
map the records' labels refer to), where <name> is the pattern's file name up to its first `%`.

Guarantees:
  * Deterministic: same input and flags -> byte-identical shards and report. Examples keep
    the reader's order; the k-th written example goes to shard k % num_shards. Workers
    (threads: decoding runs in TensorFlow, outside the GIL) only change speed.
  * Every image is decoded once (truncated/corrupt files are caught here, not in training).
  * Image bytes are copied unchanged when they are JPEG (colour or grey) or 8-bit PNG without
    alpha. CMYK JPEG, PNG with alpha, 16-bit PNG and other formats are converted to 8-bit RGB
    and re-encoded losslessly as PNG (`image/format` "png"), so every reader decodes the very
    pixels checked here; each is counted ("reencoded_png" and the kind of conversion).
  * Shards are written to temporary files and renamed at the end: a failed run leaves none.
  * The report (stderr and JSON) gives images written, boxes, per-class counts, and every
    skipped, empty, clipped, dropped or converted file with its reason.

Exit status: 0 done; 1 a bad example under --on_bad_example=error (the message names the file
and the problem); 2 bad flags.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import re
import sys
import time

import tensorflow as tf
from absl import flags

from refinedet_tf.data import coco, image_io, tfrecord, voc
from refinedet_tf.data.cli import parse_flags
from refinedet_tf.data.policy import ON_BAD_EXAMPLE, ON_BAD_EXAMPLE_HELP
from refinedet_tf.data.report import BadExampleError, Report

_DIRECTIVE = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[diouxX]")


@dataclasses.dataclass
class PrepareResult:
    report: Report
    shards: list[str]
    report_path: str
    label_map_path: str


def shard_paths(output: str, num_shards: int) -> list[str]:
    """The shard file names for `--output` (see the module docstring)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    directives = len(_DIRECTIVE.findall(output.replace("%%", "")))
    if directives == 0:
        if num_shards == 1:
            return [output]
        root, ext = os.path.splitext(output)
        if ext != ".tfrecord":
            root, ext = output, ".tfrecord"
        output = root + "-%05d-of-%05d" + ext
        directives = 2
    if directives > 2:
        raise ValueError(f"--output {output!r} has {directives} % fields; expected 1 (shard) or 2 (shard, count)")
    paths = [output % ((k,) if directives == 1 else (k, num_shards)) for k in range(num_shards)]
    if len(set(paths)) != num_shards:
        raise ValueError(f"--output {output!r} does not give {num_shards} distinct shard names")
    return paths


def _side_file(output: str, suffix: str) -> str:
    folder, name = os.path.split(output)
    stem = name.split("%", 1)[0].rstrip("-_.") if "%" in name else os.path.splitext(name)[0]
    return os.path.join(folder, (stem or "data") + suffix)


def encode_record(meta: dict, label_map) -> tuple[bytes, list[tuple[str, str]]]:
    """Decodes one example's image and returns (serialized tf.train.Example, report issues).

    Raises:
      BadExampleError naming the image file (missing, corrupt, size mismatch).
    """
    loaded = image_io.load_image(
        meta["image_path"], (int(meta["height"]), int(meta["width"])), meta["annotation_path"])
    issues = list(loaded.issues)
    if loaded.info.needs_reencoding:
        encoded, image_format = image_io.encode_png(loaded.image), "png"
        issues.append(("reencoded_png", f"was {loaded.info.format}"))
    else:
        encoded, image_format = loaded.data, loaded.info.format
    example = tfrecord.make_tf_example(
        meta, encoded, image_format, os.path.basename(meta["image_path"]), label_map)
    return tfrecord.serialize(example), issues


def prepare(reader, output: str, num_shards: int = 1, num_workers: int | None = None,
            progress: bool = True, stream=None) -> PrepareResult:
    """Writes `reader`'s examples as TFRecord shards, plus the JSON report and the label map.

    Args:
      reader: a `VocReader` or `CocoReader` (its policy decides what a bad example does).
      output: shard pattern (see `shard_paths`); num_shards: how many shards.
      num_workers: decoding threads (default: CPU count, at most 8).
      progress: draw a progress line on `stream` (default stderr).
    Returns:
      a `PrepareResult` (report, shard paths, report and label map paths).
    Raises:
      BadExampleError under on_bad_example="error"; no shard is left behind then.
    """
    stream = stream or sys.stderr
    paths = shard_paths(output, num_shards)
    num_workers = num_workers or min(8, os.cpu_count() or 1)
    report = Report()
    for issue in reader.report.issues:
        report.add(issue.path, issue.kind, issue.detail)
    for path in paths:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temps = [f"{p}.tmp-{os.getpid()}" for p in paths]
    writers = [tf.io.TFRecordWriter(t) for t in temps]
    bar = _Progress(len(reader.metadata), stream if progress else None)
    written = 0
    try:
        with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
            for meta, future in _in_order(pool, reader.metadata, reader.label_map, 4 * num_workers):
                bar.update()
                try:
                    record, issues = future.result()
                except BadExampleError as e:
                    if reader.policy.on_bad_example == "error":
                        raise
                    report.add(e.path, "skipped", e.reason)
                    continue
                for kind, detail in issues:
                    report.add(meta["image_path"], kind, detail)
                writers[written % num_shards].write(record)
                written += 1
                report.count_example(meta["classes"], reader.label_map.names)
        for writer in writers:
            writer.close()
        for temp, path in zip(temps, paths):
            os.replace(temp, path)
    except BaseException:
        for writer in writers:
            writer.close()
        for temp in temps:
            if os.path.exists(temp):
                os.remove(temp)
        raise
    finally:
        bar.close()
    report_path = _side_file(output, ".report.json")
    label_map_path = _side_file(output, ".labelmap.pbtxt")
    summary = {"shards": [os.path.basename(p) for p in paths], **report.to_dict(),
               "label_map": os.path.basename(label_map_path)}
    with open(report_path, "w", encoding="utf-8") as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    reader.label_map.save(label_map_path)
    return PrepareResult(report, paths, report_path, label_map_path)


def _in_order(pool, metas, label_map, window):
    """Yields (meta, future) in input order with at most `window` encodes in flight (memory)."""
    pending = collections.deque()
    for meta in metas:
        pending.append((meta, pool.submit(encode_record, meta, label_map)))
        if len(pending) >= window:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


class _Progress:
    """A one-line text progress bar (redrawn on a terminal, a line per 10% otherwise)."""

    def __init__(self, total, stream):
        self.total, self.stream, self.done = total, stream, 0
        self.start = self.last = time.monotonic()
        self.tty = bool(stream) and hasattr(stream, "isatty") and stream.isatty()
        self.next_line = 0.1

    def update(self):
        self.done += 1
        if not self.stream:
            return
        now = time.monotonic()
        fraction = self.done / max(self.total, 1)
        if self.tty and (now - self.last > 0.2 or self.done == self.total):
            self.stream.write("\r" + self._line(now))
            self.last = now
        elif not self.tty and fraction >= self.next_line:
            self.stream.write(self._line(now) + "\n")
            self.next_line = (int(fraction * 10) + 1) / 10

    def _line(self, now):
        rate = self.done / max(now - self.start, 1e-9)
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        return (f"prepare [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"images, {rate:.1f}/s")

    def close(self):
        if self.stream and self.tty:
            self.stream.write("\n")
        if self.stream:
            self.stream.flush()


# ---------------------------------------------------------------------------------------------
# Command line.


def _define_flags(fv):
    flags.DEFINE_enum("format", None, ["voc", "coco"], "Input format (default: detected).", flag_values=fv)
    flags.DEFINE_string("input", None, "VOC folder (with Annotations/) or COCO instances JSON.", flag_values=fv)
    flags.DEFINE_string("image_dir", None, "COCO: folder of the images (default: guessed).", flag_values=fv)
    flags.DEFINE_string("split", None, "VOC: ImageSets/Main/<split>.txt (default: all).", flag_values=fv)
    flags.DEFINE_string("label_map", None, "Names file or .pbtxt (default: the dataset's own).", flag_values=fv)
    flags.DEFINE_string("output", None, "Shard pattern, e.g. out/train-%05d-of-00004.tfrecord.", flag_values=fv)
    flags.DEFINE_integer("num_shards", 1, "Number of shards.", lower_bound=1, flag_values=fv)
    flags.DEFINE_enum("on_bad_example", "error", list(ON_BAD_EXAMPLE), ON_BAD_EXAMPLE_HELP, flag_values=fv)
    flags.DEFINE_boolean("keep_empty", False, "Keep images without objects.", flag_values=fv)
    flags.DEFINE_boolean("clip_boxes", True, "Clip boxes reaching outside the image (else bad).", flag_values=fv)
    flags.DEFINE_integer("num_workers", None, "Decoding threads (default: CPUs, at most 8).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_boolean("progress", True, "Show a progress line on stderr.", flag_values=fv)


def run(argv, stdout=None, stderr=None) -> int:
    """Runs the command with `argv` (argv[0] is the program name); returns the exit status."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    fv, status = parse_flags(argv, _define_flags, __doc__, ("input", "output"), "prepare",
                             "python -m refinedet_tf.data.prepare --input ... --output ...", stdout, stderr)
    if fv is None:
        return status
    fmt = fv.format or ("coco" if fv.input.endswith(".json") else "voc")
    # "convert": the shards keep every box the evaluation protocols count (1-pixel VOC boxes
    # too); training drops the small ones when it reads them (policy.py).
    policy = dict(on_bad_example=fv.on_bad_example, keep_empty=fv.keep_empty, clip_boxes=fv.clip_boxes,
                  purpose="convert")
    start = time.monotonic()
    try:
        shard_paths(fv.output, fv.num_shards)
        if fmt == "voc":
            reader = voc.VocReader(fv.input, fv.split, fv.label_map, **policy)
        else:
            if fv.split:
                raise ValueError("--split is for VOC; a COCO split is its JSON file")
            reader = coco.CocoReader(fv.input, fv.image_dir, fv.label_map, **policy)
        result = prepare(reader, fv.output, fv.num_shards, fv.num_workers, fv.progress, stderr)
    except BadExampleError as e:
        stderr.write(f"prepare: error: {e}\n(nothing written; --on_bad_example=skip skips and "
                     "reports such examples)\n")
        return 1
    except ValueError as e:
        stderr.write(f"prepare: error: {e}\n")
        return 2
    stderr.write(result.report.format() + "\n")
    stderr.write(f"wrote {len(result.shards)} shard(s) in {time.monotonic() - start:.1f} s: "
                 f"{result.shards[0]}{' ...' if len(result.shards) > 1 else ''}\n"
                 f"report: {result.report_path}\nlabel map: {result.label_map_path}\n")
    stdout.flush()
    return 0


def main():
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()
