"""Media type detection and thumbnails on real Pillow-made files: the type comes from the bytes, bombs and
corrupt images are rejected, thumbnails are bounded WebPs of the first frame, upright."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import pytest
from PIL import Image

from app.domain.media.processing import (
    MAX_PIXELS,
    Inspected,
    Kind,
    MediaRejected,
    inspect,
    sha256_hex,
    thumbnail_webp,
)

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def gradient(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    im = Image.linear_gradient("L").resize(size)
    return Image.merge("RGB", (im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), im)).convert(mode)


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR is patched (CRC fixed) to claim another size: a bomb in a few bytes."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


def pixel(im: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = im.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def is_webp(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


@pytest.mark.parametrize(
    ("fmt", "mime", "ext", "size"),
    [
        ("JPEG", "image/jpeg", "jpg", (640, 480)),
        ("PNG", "image/png", "png", (1, 1)),
        ("WEBP", "image/webp", "webp", (300, 900)),
        ("GIF", "image/gif", "gif", (4000, 20)),
    ],
)
def test_images_are_detected_with_their_size(fmt: str, mime: str, ext: str, size: tuple[int, int]) -> None:
    data = encode(gradient(size), fmt)
    assert inspect(data, "application/octet-stream") == Inspected(mime, "image", size[0], size[1], ext)


def test_declared_mime_is_not_trusted() -> None:
    data = encode(gradient((20, 10)), "PNG")
    assert inspect(data, "image/jpeg") == Inspected("image/png", "image", 20, 10, "png")


def test_animated_gif_and_webp_are_images() -> None:
    frames = [Image.new("RGB", (64, 32), color) for color in ("red", "green", "blue")]
    for fmt, mime in (("GIF", "image/gif"), ("WEBP", "image/webp")):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        assert inspect(data, None) == Inspected(mime, "image", 64, 32, mime.split("/")[1])
        thumb = decode(thumbnail_webp(data))
        assert getattr(thumb, "n_frames", 1) == 1
        assert thumb.size == (64, 32)
        assert pixel(thumb.convert("RGB"), (10, 10))[0] > 200  # the first (red) frame


def exif_rotated_jpeg() -> bytes:
    """Stored landscape 400x200 with the left half red, EXIF orientation 6: displayed as portrait 200x400."""
    im = Image.new("RGB", (400, 200), "blue")
    im.paste("red", (0, 0, 200, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    return encode(im, "JPEG", exif=exif)


def test_exif_rotated_jpeg_reports_displayed_size_and_thumbnail_is_upright() -> None:
    data = exif_rotated_jpeg()
    assert inspect(data, None) == Inspected("image/jpeg", "image", 200, 400, "jpg")
    thumb = decode(thumbnail_webp(data, max_side=100))
    assert thumb.size == (50, 100)
    # Rotated 90° clockwise, the stored left half becomes the top.
    red, _, blue = pixel(thumb, (25, 10))
    assert red > 200 and blue < 60
    red, _, blue = pixel(thumb, (25, 90))
    assert red < 60 and blue > 200


def png_with_exif_after_the_pixels(im: Image.Image, exif: Image.Exif) -> bytes:
    """A PNG whose eXIf chunk follows IDAT (allowed by the spec): only a walk of the chunks finds it early."""
    data = encode(im, "PNG")
    iend = data.rindex(b"IEND") - 4
    body = exif.tobytes()
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + body))
    return data[:iend] + chunk + data[iend:]


def test_exif_rotated_png_reports_displayed_size_wherever_its_exif_chunk_is() -> None:
    im = Image.new("RGB", (400, 200), "blue")
    im.paste("red", (0, 0, 200, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    for data in (encode(im, "PNG", exif=exif), png_with_exif_after_the_pixels(im, exif)):
        assert inspect(data, None) == Inspected("image/png", "image", 200, 400, "png")
        thumb = decode(thumbnail_webp(data, max_side=100))
        assert thumb.size == (50, 100)
        red, _, blue = pixel(thumb, (25, 10))
        assert red > 200 and blue < 60


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff\xe0" + b"\x00" * 40,  # JPEG magic, garbage after
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        b"GIF89a" + b"\xff" * 40,
        b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 20,
        encode(gradient((200, 100)), "PNG")[:-300],  # truncated
        encode(gradient((200, 100)), "GIF")[:30],
    ],
)
def test_corrupt_or_truncated_images_are_rejected(data: bytes) -> None:
    with pytest.raises(MediaRejected) as exc:
        inspect(data, "image/png")
    assert exc.value.reason == "corrupt image"
    with pytest.raises(MediaRejected):
        thumbnail_webp(data)


def test_truncated_jpeg_is_rejected_by_thumbnail() -> None:
    # JPEG has no checksums: verify() cannot see a cut-off tail, only decoding (the thumbnail) does.
    data = encode(Image.effect_noise((800, 600), 50).convert("RGB"), "JPEG")
    with pytest.raises(MediaRejected, match="corrupt image"):
        thumbnail_webp(data[: len(data) // 2])


@pytest.mark.parametrize(
    "size",
    [
        (50_000, 50_000),  # beyond Pillow's own DecompressionBombError
        (10_000, 10_000),  # 100 MP: above ours, in Pillow's warning band
        (8_000, 8_000),  # 64 MP: under Pillow's limits, above ours
        (20_001, 10),  # a tiny area, but too long a side
    ],
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_rejected_before_decoding(size: tuple[int, int]) -> None:
    data = png_claiming(*size)
    assert len(data) < 100
    with pytest.raises(MediaRejected, match="image too large"):
        inspect(data, "image/png")
    with pytest.raises(MediaRejected, match="image too large"):
        thumbnail_webp(data)


def test_header_within_the_limits_goes_on_to_decoding() -> None:
    assert MAX_PIXELS >= 6_000 * 6_000
    with pytest.raises(MediaRejected, match="corrupt image"):  # passes the limits, then fails to decode
        thumbnail_webp(png_claiming(6_000, 6_000))


MP4_HEAD = b"\x00\x00\x00\x18ftyp"


@pytest.mark.parametrize(
    ("data", "declared", "expected"),
    [
        (b"OggS\x00\x02" + b"\x00" * 40 + b"OpusHead", "audio/mpeg", ("audio/ogg", "audio", "ogg")),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00" * 20, None, ("audio/mpeg", "audio", "mp3")),
        (b"\xff\xfb\x90\x64" + b"\x00" * 20, None, ("audio/mpeg", "audio", "mp3")),
        (b"\xff\xf1\x50\x80" + b"\x00" * 20, None, ("audio/aac", "audio", "aac")),
        (b"#!AMR\n" + b"\x00" * 20, None, ("audio/amr", "audio", "amr")),
        (MP4_HEAD + b"isom\x00\x00\x02\x00isomiso2mp41", None, ("video/mp4", "video", "mp4")),
        (MP4_HEAD + b"mp42\x00\x00\x00\x00mp42isom", "audio/ogg", ("video/mp4", "video", "mp4")),
        (MP4_HEAD + b"3gp4\x00\x00\x00\x00isom3gp4", None, ("video/3gpp", "video", "3gp")),
        (MP4_HEAD + b"M4A \x00\x00\x00\x00M4A mp42", None, ("audio/mp4", "audio", "m4a")),
        (MP4_HEAD + b"heic\x00\x00\x00\x00mif1heic", None, ("image/heic", "document", "heic")),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "image/jpeg", ("application/pdf", "document", "pdf")),
        (b"PK\x03\x04\x14\x00" + b"\x00" * 30, DOCX, (DOCX, "document", "docx")),
        (b"PK\x03\x04\x14\x00" + b"\x00" * 30, f"{DOCX.upper()}; charset=binary", (DOCX, "document", "docx")),
        (b"PK\x03\x04\x14\x00" + b"\x00" * 30, "application/vnd.android.package-archive",
         ("application/zip", "document", "zip")),
        (b"PK\x03\x04\x14\x00" + b"\x00" * 30, None, ("application/zip", "document", "zip")),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", None, ("video/webm", "video", "webm")),
        (b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska", None,
         ("video/x-matroska", "video", "mkv")),
        (b"hello, plain text", "text/plain", ("application/octet-stream", "document", "bin")),
        (b"MZ\x90\x00", "image/png", ("application/octet-stream", "document", "bin")),
        (b"\x00", None, ("application/octet-stream", "document", "bin")),
    ],
)  # fmt: skip
def test_magic_numbers(data: bytes, declared: str | None, expected: tuple[str, Kind, str]) -> None:
    content_type, kind, extension = expected
    assert inspect(data, declared) == Inspected(content_type, kind, None, None, extension)


def test_empty_file_is_rejected() -> None:
    with pytest.raises(MediaRejected) as exc:
        inspect(b"", "image/jpeg")
    assert exc.value.reason == "empty file"
    assert str(exc.value) == "empty file"


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((1600, 1200), 320, (320, 240)),
        ((1200, 1600), 320, (240, 320)),
        ((1000, 10), 320, (320, 3)),
        ((1200, 1200), 100, (100, 100)),
        ((200, 100), 320, (200, 100)),  # never upscaled
        ((1, 1), 320, (1, 1)),
    ],
)
def test_thumbnail_is_bounded_keeps_aspect_and_never_upscales(
    size: tuple[int, int], max_side: int, expected: tuple[int, int]
) -> None:
    for fmt in ("JPEG", "PNG", "WEBP", "GIF"):
        data = thumbnail_webp(encode(gradient(size), fmt), max_side=max_side)
        assert is_webp(data), fmt
        assert decode(data).size == expected, fmt


def test_thumbnail_keeps_alpha() -> None:
    im = Image.new("RGBA", (500, 250), (255, 0, 0, 255))
    im.paste((0, 0, 0, 0), (0, 0, 250, 250))
    thumb = decode(thumbnail_webp(encode(im, "PNG")))
    assert thumb.mode == "RGBA"
    assert pixel(thumb, (10, 80))[3] == 0
    assert pixel(thumb, (300, 80))[3] == 255


@pytest.mark.parametrize(
    ("im", "fmt", "mode"),
    [
        (Image.new("P", (64, 64), 3), "GIF", "RGB"),
        (Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", "RGB"),
        (Image.new("L", (64, 64), 128), "PNG", "RGB"),
        (Image.new("LA", (64, 64), (128, 0)), "PNG", "RGBA"),
        (Image.new("I;16", (64, 64), 40_000), "PNG", "RGB"),
    ],
)
def test_thumbnail_converts_other_modes(im: Image.Image, fmt: str, mode: str) -> None:
    thumb = decode(thumbnail_webp(encode(im, fmt)))
    assert thumb.mode == mode


def test_cmyk_red_stays_red_and_16_bit_grey_is_scaled() -> None:
    red = decode(thumbnail_webp(encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG")))
    r, g, b = pixel(red, (32, 32))
    assert r > 200 and g < 60 and b < 60
    grey = decode(thumbnail_webp(encode(Image.new("I;16", (64, 64), 40_000), "PNG")))
    assert 140 < pixel(grey, (32, 32))[0] < 170  # 40000/65535 of full scale, not clipped to 255


def test_thumbnail_of_non_image_is_rejected() -> None:
    with pytest.raises(MediaRejected):
        thumbnail_webp(b"%PDF-1.7\n")
    with pytest.raises(MediaRejected):
        thumbnail_webp(b"")


def test_sha256_hex() -> None:
    for data in (b"", b"abc", bytes(range(256)) * 100):
        assert sha256_hex(data) == hashlib.sha256(data).hexdigest()
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
