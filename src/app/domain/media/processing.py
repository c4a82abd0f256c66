"""What a media file really is, and its thumbnail: pure functions over bytes, no I/O.

Media reaches us from gateways and from agents with a declared mime type that anyone can forge, so the
type is read from the bytes themselves: images by Pillow, everything else by a small magic-number table.
Images are hostile input too: a few kilobytes of PNG can claim to be 50,000 x 50,000 pixels and ask for
gigabytes on decode, so pixel and side limits are checked on the header, before any pixel is decoded.
Within those limits a 150 KB PNG still decodes to 159 MB of RGBA (issue 12, finding 9: four at once took a
worker from 693 to 1,503 MiB). So `thumbnail_cost` says, from the header alone, how many bytes the
thumbnail's decode will hold at its peak, and `thumbnail_webp` keeps to that figure: JPEGs are decoded by
libjpeg at 1/2 to 1/8 scale (`draft`), and the full-size frame of other formats is reduced by an integer
factor a strip of rows at a time (Pillow's own `reduce`/`resize` of RGBA would first make a premultiplied
copy of the whole frame, and `ImageOps.exif_transpose` another copy); orientation is applied to the small
result. The worker admits a decode only within its budget (`decode_budget.DecodeBudget`).

These functions are CPU-bound; async callers should run them in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from PIL import ExifTags, Image

MAX_PIXELS = 40_000_000  # 40 megapixels: bigger than any phone photo, far below a decompression bomb
MAX_SIDE = 20_000
THUMBNAIL_QUALITY = 80
# The thumbnail is resized from an image at least this many times its size (an integer reduction first,
# as Pillow's thumbnail() does by default): near fair resampling at a fraction of the work.
REDUCING_GAP = 2.0
STRIP_PIXELS = 1 << 19  # source pixels reduced per step: a strip's copies hold a few MiB, whatever the image
# Decoders that hold more than the decoded frame: libwebp keeps its canvas and the previous one and hands
# Pillow a full copy (measured: 3.8 x the frame); an animated PNG or GIF keeps a frame for disposal.
_WEBP_DECODE_FACTOR = 4
_ANIMATED_DECODE_FACTOR = 2
_DECODER_STATE = 4 * 1024 * 1024  # the decoder's own buffers (zlib window, libjpeg tables, a row or two)
_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

Kind = Literal["image", "audio", "video", "document"]

# Only these Pillow plugins ever see untrusted bytes; every other decoder stays unreachable.
_PILLOW_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
_PILLOW_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}

_DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
_OFFICE_MIMES = frozenset({_DOCX, _XLSX, _PPTX})

_EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/heic": "heic",
    "image/avif": "avif",
    "audio/ogg": "ogg",
    "audio/mpeg": "mp3",
    "audio/aac": "aac",
    "audio/amr": "amr",
    "audio/mp4": "m4a",
    "video/mp4": "mp4",
    "video/3gpp": "3gp",
    "video/quicktime": "mov",
    "video/webm": "webm",
    "video/x-matroska": "mkv",
    "application/pdf": "pdf",
    "application/zip": "zip",
    _DOCX: "docx",
    _XLSX: "xlsx",
    _PPTX: "pptx",
    "application/octet-stream": "bin",
}

# ISO base media (`ftyp`) major brands. Anything else carrying `ftyp` is treated as MP4 video.
_FTYP_BRANDS: dict[bytes, tuple[str, Kind]] = {
    b"M4A ": ("audio/mp4", "audio"),
    b"M4B ": ("audio/mp4", "audio"),
    b"M4P ": ("audio/mp4", "audio"),
    b"3gp4": ("video/3gpp", "video"),
    b"3gp5": ("video/3gpp", "video"),
    b"3gp6": ("video/3gpp", "video"),
    b"3gp7": ("video/3gpp", "video"),
    b"3gs7": ("video/3gpp", "video"),
    b"3gg6": ("video/3gpp", "video"),
    b"3g2a": ("video/3gpp", "video"),
    b"qt  ": ("video/quicktime", "video"),
    # HEIC/AVIF photos are `ftyp` files too; Pillow here cannot decode them, so they stay documents
    # (stored and downloadable, never thumbnailed) rather than being mislabelled as video.
    b"heic": ("image/heic", "document"),
    b"heix": ("image/heic", "document"),
    b"mif1": ("image/heic", "document"),
    b"msf1": ("image/heic", "document"),
    b"avif": ("image/avif", "document"),
    b"avis": ("image/avif", "document"),
}


class MediaRejected(Exception):
    """The bytes are not media we accept; `reason` is short and shown to agents."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Inspected:
    content_type: str
    kind: Kind
    width: int | None  # as displayed, i.e. after EXIF orientation; None for non-images
    height: int | None
    extension: str  # without the dot, from the detected type (never from the sender's filename)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inspect(data: bytes, declared_mime: str | None) -> Inspected:
    """The real type of `data`. The declared mime only picks between office formats sharing ZIP magic."""
    if not data:
        raise MediaRejected("empty file")
    if _looks_like_image(data):
        return _inspect_image(data)
    content_type, kind = _sniff(data, declared_mime)
    return Inspected(content_type, kind, None, None, _EXTENSIONS[content_type])


def thumbnail_cost(data: bytes, max_side: int = 320) -> int:
    """The bytes `thumbnail_webp(data, max_side)` holds at its peak, read from the header (no decoding)."""
    try:
        im, plan = _open_for_thumbnail(data, max_side)
        im.close()
    except MediaRejected:
        raise
    except Exception as exc:
        raise _image_failure(exc) from exc
    return plan.cost


def thumbnail_webp(data: bytes, max_side: int = 320) -> bytes:
    """A WebP of the first frame, EXIF orientation applied, longest side <= max_side, never upscaled."""
    try:
        im, plan = _open_for_thumbnail(data, max_side)
        with im:
            im.load()
            orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
            frame = _reduced(im, plan)
            if frame.size != plan.final_size:
                (width, height), (fx, fy) = plan.source_size, plan.factor
                frame = frame.resize(
                    plan.final_size, Image.Resampling.LANCZOS, box=(0, 0, width / fx, height / fy)
                )
            if (transpose := _ORIENTATION_TRANSPOSE.get(orientation)) is not None:
                frame = frame.transpose(transpose)  # on the thumbnail, not the full frame
            out = io.BytesIO()
            frame.save(out, "WEBP", quality=THUMBNAIL_QUALITY, method=4)  # `frame` may be `im` itself
            return out.getvalue()
    except MediaRejected:
        raise
    except Exception as exc:
        raise _image_failure(exc) from exc


@dataclass(frozen=True)
class _Plan:
    source_size: tuple[int, int]  # as decoded (after a JPEG's draft scaling)
    factor: tuple[int, int]  # the integer reduction applied strip by strip
    final_size: tuple[int, int]
    mode: str  # the thumbnail's mode: RGB, or RGBA when the image has transparency
    cost: int  # bytes held at the peak


def bytes_per_pixel(mode: str) -> int:
    """What Pillow allocates per pixel of a decoded image (RGB is stored in 4 bytes, like RGBA)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def thumbnail_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size Image.thumbnail((max_side, max_side)) gives: aspect kept, longest side <= max_side."""
    width, height = size
    if width <= max_side and height <= max_side:
        return size
    aspect = width / height

    def rounded(number: float, error: Callable[[int], float]) -> int:
        return max(min(math.floor(number), math.ceil(number), key=error), 1)

    if aspect <= 1:
        return rounded(max_side * aspect, lambda n: abs(aspect - n / max_side)), max_side
    return max_side, rounded(max_side / aspect, lambda n: 0 if n == 0 else abs(aspect - max_side / n))


def reduction_factor(source: int, final: int) -> int:
    """The integer reduction Image.reduce applies before the final resize (as Pillow's resize computes it)."""
    return int(source / final / REDUCING_GAP) or 1


def jpeg_coefficient_bytes(size: tuple[int, int], sampling: list[tuple[int, int]]) -> int:
    """libjpeg's whole-image coefficient buffer (2 bytes per DCT coefficient, every component at its
    sampling): a progressive or multi-scan JPEG needs it at full size whatever the draft scale, and the
    header does not say whether the scans are interleaved, so every JPEG is costed with it."""
    width, height = size
    h_max, v_max = max(h for h, _ in sampling), max(v for _, v in sampling)
    total = 0
    for h, v in sampling:
        blocks_x = math.ceil(math.ceil(width * h / h_max) / 8)
        blocks_y = math.ceil(math.ceil(height * v / v_max) / 8)
        total += blocks_x * blocks_y * 64 * 2
    return total


def _open_for_thumbnail(data: bytes, max_side: int) -> tuple[Image.Image, _Plan]:
    """The first frame's header, a JPEG set to decode at the smallest scale the thumbnail allows, and the
    plan: what the thumbnail's decode will hold at its peak, counted step by step as `thumbnail_webp` goes."""
    if max_side < 1:
        raise ValueError("max_side must be positive")
    im = _open_image(data)
    try:
        im.seek(0)  # first frame of an animation
        coefficients = 0
        if im.format == "JPEG":
            layers = getattr(im, "layer", None) or [(0, 1, 1, 0)] * len(im.getbands())
            coefficients = jpeg_coefficient_bytes(im.size, [(h, v) for _, h, v, _ in layers])
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale; it never goes below the requested size.
            side = int(max_side * REDUCING_GAP)
            im.draft(im.mode, (side, side))
        width, height = im.size
        final = thumbnail_size(im.size, max_side)
        factor = (reduction_factor(width, final[0]), reduction_factor(height, final[1]))
        decoded = width * height * bytes_per_pixel(im.mode)
        if im.format == "WEBP":
            decoded *= _WEBP_DECODE_FACTOR
        elif getattr(im, "is_animated", False):
            decoded *= _ANIMATED_DECODE_FACTOR
        reduced = math.ceil(width / factor[0]) * math.ceil(height / factor[1]) * 4
        strip = min(width * height, max(STRIP_PIXELS, width * factor[1])) * 4
        cost = (
            _DECODER_STATE
            + decoded
            + coefficients
            + 3 * strip  # a strip's crop, its conversion, and reduce()'s premultiplied copy
            + 2 * reduced  # the reduced frame, and resize()'s premultiplied copy of it
            + 3 * final[0] * final[1] * 4  # the thumbnail, its transposition, the WebP encoder's copy
        )
        mode = "RGBA" if im.has_transparency_data else "RGB"
    except BaseException:
        im.close()
        raise
    return im, _Plan(im.size, factor, final, mode, cost)


def _reduced(im: Image.Image, plan: _Plan) -> Image.Image:
    """The decoded frame in the thumbnail's mode, reduced by the plan's factor, a strip of rows at a time:
    never a second full-size copy."""
    if plan.factor == (1, 1) and im.mode == plan.mode:
        return im
    (width, height), (fx, fy) = im.size, plan.factor
    out = Image.new(plan.mode, (math.ceil(width / fx), math.ceil(height / fy)))
    rows = fy * max(1, STRIP_PIXELS // (width * fy))
    for top in range(0, height, rows):
        strip = _webp_mode(im.crop((0, top, width, min(top + rows, height))), plan.mode)
        out.paste(strip.reduce((fx, fy)) if (fx, fy) != (1, 1) else strip, (0, top // fy))
    return out


def _looks_like_image(data: bytes) -> bool:
    return data.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a")) or (
        data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    )


def _inspect_image(data: bytes) -> Inspected:
    try:
        # verify() checks the stream (PNG chunk CRCs, for instance) but leaves the image unusable,
        # hence the second open to read format, size and orientation.
        with _open_image(data) as im:
            im.verify()
        with _open_image(data) as im:
            content_type = _PILLOW_MIME[str(im.format)]
            width, height = im.size
            # Pillow's PNG getexif() decodes the whole image to look for an eXIf chunk after the pixels.
            exif = _png_exif(data) if im.format == "PNG" else im.getexif()
            if exif.get(ExifTags.Base.Orientation) in (5, 6, 7, 8):
                width, height = height, width
    except MediaRejected:
        raise
    except Exception as exc:
        raise _image_failure(exc) from exc
    return Inspected(content_type, "image", width, height, _EXTENSIONS[content_type])


def _png_exif(data: bytes) -> Image.Exif:
    """The EXIF of a PNG's eXIf chunk, wherever it is, found by walking the chunks without inflating any."""
    exif, pos = Image.Exif(), 8
    while pos + 8 <= len(data):
        length, chunk = struct.unpack(">I4s", data[pos : pos + 8])
        if chunk == b"eXIf":
            exif.load(data[pos + 8 : pos + 8 + length])
            break
        if chunk == b"IEND":
            break
        pos += 12 + length  # length, type, data, CRC
    return exif


def _open_image(data: bytes) -> Image.Image:
    """Open (header only, nothing decoded yet) and enforce the size limits before anything else."""
    im = Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
    width, height = im.size
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        im.close()
        raise MediaRejected("image too large")
    if width < 1 or height < 1:
        im.close()
        raise MediaRejected("corrupt image")
    return im


def _image_failure(exc: Exception) -> MediaRejected:
    # Pillow's own bomb guard (above 2 x Image.MAX_IMAGE_PIXELS) fires inside Image.open, before ours.
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return MediaRejected("image too large")
    # Pillow's parsers raise many types on hostile input (OSError, SyntaxError, ValueError, EOFError,
    # struct.error, IndexError...). Bytes whose magic says image but that do not decode are corrupt.
    return MediaRejected("corrupt image")


def _webp_mode(im: Image.Image, mode: str) -> Image.Image:
    """WebP holds RGB or RGBA (`mode`): palette/CMYK/grey are converted, 16/32-bit grey scaled to 8 bits."""
    if im.mode == mode:
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: convert("RGB") would clip at 255, so scale into 8 bits first.
        im = im.point(lambda v: v / 256).convert("L")
    return im.convert(mode)


def _sniff(data: bytes, declared_mime: str | None) -> tuple[str, Kind]:
    head = data[:64]
    if head.startswith(b"OggS"):
        return "audio/ogg", "audio"
    if head.startswith(b"#!AMR"):
        return "audio/amr", "audio"
    if head.startswith(b"ID3"):
        return "audio/mpeg", "audio"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # Frame sync. Layer bits 00 are reserved in MPEG audio but mean ADTS in AAC (sync 0xFFF).
        if head[1] & 0x06:
            return "audio/mpeg", "audio"
        if head[1] & 0xF0 == 0xF0:
            return "audio/aac", "audio"
    if head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12], ("video/mp4", "video"))
    if head.startswith(b"%PDF-"):
        return "application/pdf", "document"
    if head.startswith(b"PK\x03\x04"):
        # docx/xlsx/pptx are ZIPs; telling them apart means reading the archive, so the declared type is
        # believed only when it names one of them. Other claims (an .apk, a .jar) become a plain zip.
        declared = (declared_mime or "").split(";")[0].strip().lower()
        return (declared if declared in _OFFICE_MIMES else "application/zip"), "document"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        # EBML: the DocType element near the start says WebM or Matroska.
        return ("video/x-matroska", "video") if b"matroska" in head else ("video/webm", "video")
    return "application/octet-stream", "document"
