"""What a media file really is, and its thumbnail: pure functions over bytes, no I/O.

Media reaches us from gateways and from agents with a declared mime type that anyone can forge, so the
type is read from the bytes themselves: images by Pillow, everything else by a small magic-number table.
Images are hostile input too: a few kilobytes of PNG can claim to be 50,000 x 50,000 pixels and ask for
gigabytes on decode, so pixel and side limits are checked on the header, before any pixel is decoded.

These functions are CPU-bound; async callers should run them in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Literal

from PIL import ExifTags, Image, ImageOps

MAX_PIXELS = 40_000_000  # 40 megapixels: bigger than any phone photo, far below a decompression bomb
MAX_SIDE = 20_000
THUMBNAIL_QUALITY = 80

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


def thumbnail_webp(data: bytes, max_side: int = 320) -> bytes:
    """A WebP of the first frame, EXIF orientation applied, longest side <= max_side, never upscaled."""
    if max_side < 1:
        raise ValueError("max_side must be positive")
    try:
        with _open_image(data) as im:
            im.seek(0)  # first frame of an animation
            if im.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale; it never goes below the requested size.
                im.draft(im.mode, (max_side, max_side))
            frame = ImageOps.exif_transpose(im)
            frame.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            frame = _webp_mode(frame)
            out = io.BytesIO()
            frame.save(out, "WEBP", quality=THUMBNAIL_QUALITY, method=4)
            return out.getvalue()
    except MediaRejected:
        raise
    except Exception as exc:
        raise _image_failure(exc) from exc


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
            if im.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):
                width, height = height, width
    except MediaRejected:
        raise
    except Exception as exc:
        raise _image_failure(exc) from exc
    return Inspected(content_type, "image", width, height, _EXTENSIONS[content_type])


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


def _webp_mode(im: Image.Image) -> Image.Image:
    """WebP holds RGB or RGBA: keep alpha when there is any, otherwise flatten palette/CMYK/grey to RGB."""
    if im.mode in ("RGB", "RGBA"):
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: convert("RGB") would clip at 255, so scale into 8 bits first.
        im = im.point(lambda v: v / 256).convert("L")
    return im.convert("RGBA" if im.has_transparency_data else "RGB")


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
