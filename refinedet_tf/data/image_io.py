"""Reading, checking and decoding image files.

Decoding uses TensorFlow's own decoder, `tf.io.decode_image(channels=3)`, for every reader:
the TFRecord pipeline must decode in the graph with it, and TensorFlow's JPEG decoder (fast
integer DCT) differs from OpenCV/Pillow by a few grey levels, so decoding VOC/COCO images with
anything else would make "the same data read from VOC and from TFRecords" differ.

What decoding does with unusual images (each is counted in the report by its kind):
  grayscale (JPEG or PNG)   -> RGB by repeating the channel          ("grayscale")
  CMYK / YCCK JPEG          -> RGB by TensorFlow's JPEG decoder         ("cmyk")
  RGBA / grey+alpha PNG     -> alpha dropped, no compositing            ("alpha")
  16-bit PNG                -> 8 bits, value >> 8 (TF's conversion)     ("16bit")
  GIF (first frame) / BMP   -> RGB                                      ("other_format")
  PNG named .jpg, ...       -> decoded by content, never by extension   ("format_mismatch")
  EXIF orientation tag      -> NOT applied: boxes follow stored pixels  ("exif_orientation")
A file that is not an image, or a truncated/corrupt one, raises `BadExampleError`.

`probe_image` reads only headers (no pixel decoding), so readers can check existence, format
and size of every image cheaply when they are built.
"""

from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np
import tensorflow as tf

from refinedet_tf.data.report import BadExampleError

_EXTENSIONS = {"jpeg": (".jpg", ".jpeg", ".jpe", ".jfif"), "png": (".png",), "gif": (".gif",),
               "bmp": (".bmp", ".dib")}
# Every extension of an image this library decodes (folders of images: predict, calibration).
IMAGE_EXTENSIONS = tuple(ext for exts in _EXTENSIONS.values() for ext in exts)
# JPEG SOF markers carry the size and component count (not DHT/JPG/DAC: C4, C8, CC).
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_HEADER_BYTES = 1 << 16


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What an image file's header says.

    format: "jpeg" | "png" | "gif" | "bmp"; height, width: stored pixels; channels: stored
    components (1 grey, 2 grey+alpha, 3 colour, 4 CMYK or RGBA); bit_depth: bits per sample;
    has_alpha; cmyk (a 4-component JPEG); exif_orientation: the tag's value (1..8) or 0.
    """

    format: str
    height: int
    width: int
    channels: int
    bit_depth: int = 8
    has_alpha: bool = False
    cmyk: bool = False
    exif_orientation: int = 0

    def conversions(self) -> list[str]:
        """Report kinds of what decoding to 8-bit RGB does to this image (may be empty)."""
        kinds = []
        if self.channels in (1, 2):
            kinds.append("grayscale")
        if self.cmyk:
            kinds.append("cmyk")
        if self.has_alpha:
            kinds.append("alpha")
        if self.bit_depth == 16:
            kinds.append("16bit")
        if self.format not in ("jpeg", "png"):
            kinds.append("other_format")
        return kinds

    @property
    def needs_reencoding(self) -> bool:
        """True when the stored bytes should not be copied into a TFRecord as they are.

        JPEG (grey or colour) and 8-bit PNG without alpha are copied: every `decode_*(channels=3)`
        gives the same RGB. CMYK JPEG (decoders disagree on Adobe's inverted CMYK), PNG with
        alpha (a consumer might composite), 16-bit PNG (decoders round differently) and formats
        other than JPEG/PNG (the TF Object Detection API only knows those two) are re-encoded.
        """
        return (self.format not in ("jpeg", "png") or self.cmyk or self.has_alpha
                or self.bit_depth != 8)


def read_file(path: str, referenced_by: str | None = None) -> bytes:
    """The file's bytes; a missing or unreadable file raises BadExampleError naming it."""
    return _read(path, referenced_by, -1)


def read_header(path: str, referenced_by: str | None = None) -> bytes:
    """The first 64 KiB of a file (enough for `probe_image` but for rare huge JPEG headers)."""
    return _read(path, referenced_by, _HEADER_BYTES)


def _read(path, referenced_by, size):
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as e:
        why = ("image file not found" if isinstance(e, FileNotFoundError)
               else f"cannot read image: {e.strerror or e}")
        if referenced_by:
            why += f" (referenced by {referenced_by})"
        raise BadExampleError(path, why) from None


def probe_file(path: str, referenced_by: str | None = None) -> ImageInfo:
    """`probe_image` of a file, reading only its header unless the header is unusually long."""
    data = read_header(path, referenced_by)
    try:
        return probe_image(data, path, complete=len(data) < _HEADER_BYTES)
    except _NeedMoreData:
        return probe_image(read_file(path, referenced_by), path)


class _NeedMoreData(Exception):
    """The header read so far ends before the JPEG frame header."""


def probe_image(data: bytes, path: str = "<bytes>", complete: bool = True) -> ImageInfo:
    """Parses an image header (JPEG, PNG, GIF, BMP) without decoding pixels.

    Args:
      data: the file's bytes, or its beginning when `complete` is False.
      path: named in errors.
    Raises:
      BadExampleError(path, ...) when the bytes are not an image of a supported format.
    """
    if data[:3] == b"\xff\xd8\xff":
        return _probe_jpeg(data, path, complete)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 33 or data[12:16] != b"IHDR":
            raise BadExampleError(path, "PNG file is truncated before its IHDR header")
        width, height, depth, color = struct.unpack(">IIBB", data[16:26])
        channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(color)
        if channels is None:
            raise BadExampleError(path, f"PNG has an invalid colour type {color}")
        return ImageInfo("png", height, width, channels, bit_depth=max(depth, 8),
                         has_alpha=color in (4, 6))
    if data[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", data[6:10])
        return ImageInfo("gif", height, width, 3)
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return ImageInfo("bmp", abs(height), width, 3)
    if not data:
        raise BadExampleError(path, "image file is empty")
    raise BadExampleError(
        path, f"not an image (JPEG, PNG, GIF or BMP expected; file starts with {data[:8]!r})")


def _probe_jpeg(data: bytes, path: str, complete: bool) -> ImageInfo:
    pos, orientation = 2, 0
    while True:
        # Markers may be padded with any number of 0xFF bytes.
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if pos + 3 > len(data):
            if not complete:
                raise _NeedMoreData()
            raise BadExampleError(path, "JPEG is truncated before its frame header (SOF)")
        marker = data[pos]
        pos += 1
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # standalone markers
            continue
        (length,) = struct.unpack(">H", data[pos:pos + 2])
        segment = data[pos + 2:pos + length]
        if marker in _SOF_MARKERS:
            if len(segment) < 6:
                if not complete:
                    raise _NeedMoreData()
                raise BadExampleError(path, "JPEG is truncated inside its frame header (SOF)")
            depth, height, width, components = struct.unpack(">BHHB", segment[:6])
            if height == 0 or width == 0:
                raise BadExampleError(path, f"JPEG frame header says {width}x{height} pixels")
            return ImageInfo("jpeg", height, width, components, bit_depth=depth,
                             cmyk=components == 4, exif_orientation=orientation)
        if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
            orientation = _exif_orientation(segment[6:])
        if marker in (0xD9, 0xDA):
            raise BadExampleError(path, "JPEG has no frame header (SOF) before its image data")
        pos += length


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in a TIFF block, or 0 (absent or unreadable)."""
    try:
        endian = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack(endian + "I", tiff[4:8])
        (count,) = struct.unpack(endian + "H", tiff[ifd:ifd + 2])
        for k in range(count):
            entry = tiff[ifd + 2 + 12 * k:ifd + 14 + 12 * k]
            tag, _, _, value = struct.unpack(endian + "HHIH", entry[:10])
            if tag == 0x0112:
                return value if 1 <= value <= 8 else 0
    except (KeyError, struct.error):
        pass
    return 0


def extension_mismatch(path: str, info: ImageInfo) -> bool:
    """True when the file name's extension names another format than the content."""
    ext = os.path.splitext(path)[1].lower()
    known = {e for exts in _EXTENSIONS.values() for e in exts}
    return ext in known and ext not in _EXTENSIONS[info.format]


def decode_image(data: bytes, path: str = "<bytes>") -> np.ndarray:
    """Decodes image bytes to uint8 [H, W, 3] RGB exactly as the TFRecord pipeline does.

    Raises:
      BadExampleError when the bytes are not an image or are truncated/corrupt.
    """
    probe_image(data, path)  # a clear "not an image" before TensorFlow's terser message
    try:
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        message = (e.message or str(e)).split("[Op:")[0].strip()
        raise BadExampleError(path, f"cannot decode image (truncated or corrupt): {message}") from None
    return image.numpy()


def encode_png(image_rgb: np.ndarray) -> bytes:
    """Lossless 8-bit RGB PNG bytes of uint8 [H, W, 3] pixels (deterministic)."""
    return tf.io.encode_png(np.ascontiguousarray(image_rgb, np.uint8)).numpy()


@dataclasses.dataclass
class LoadedImage:
    """A decoded image and what is known of its file.

    image: uint8 [H, W, 3] RGB; data: the file's bytes; info: its header; issues: report kinds
    (conversions, format mismatch, EXIF orientation) with a detail string each.
    """

    image: np.ndarray
    data: bytes
    info: ImageInfo
    issues: list[tuple[str, str]]


def load_image(path: str, expected_size: tuple[int, int] | None = None,
               referenced_by: str | None = None) -> LoadedImage:
    """Reads, checks and decodes one image file.

    Args:
      path: the image file.
      expected_size: (height, width) the annotation claims; a different real size raises.
      referenced_by: the annotation file naming this image, for messages.
    Raises:
      BadExampleError naming the file: missing, not an image, corrupt, or size mismatch.
    """
    data = read_file(path, referenced_by)
    info = probe_image(data, path)
    check_size(path, info, expected_size, referenced_by)
    image = decode_image(data, path)
    if image.shape[:2] != (info.height, info.width):
        raise BadExampleError(
            path, f"header says {info.width}x{info.height} but pixels decode to "
                  f"{image.shape[1]}x{image.shape[0]}")
    return LoadedImage(image, data, info, image_issues(path, info))


def check_size(path, info: ImageInfo, expected_size, referenced_by=None) -> None:
    """Raises BadExampleError naming both sizes when the annotation's size is not the image's."""
    if expected_size is not None and tuple(expected_size) != (info.height, info.width):
        eh, ew = expected_size
        source = referenced_by or "the annotation"
        raise BadExampleError(
            path, f"{source} says the image is {ew}x{eh} (width x height) but the image file is "
                  f"{info.width}x{info.height}")


def image_issues(path: str, info: ImageInfo) -> list[tuple[str, str]]:
    """(kind, detail) report entries for what reading this image changes or ignores."""
    issues = [(kind, f"{info.format}, {info.channels} channel(s), {info.bit_depth}-bit")
              for kind in info.conversions()]
    if extension_mismatch(path, info):
        issues.append(("format_mismatch", f"content is {info.format}"))
    if info.exif_orientation > 1:
        issues.append(("exif_orientation", f"orientation {info.exif_orientation} not applied"))
    return issues
