"""The decode budget's arithmetic (issue 12, finding 9): what a thumbnail's decode costs, read from the
header, bounds what it really holds (measured in a fresh process), and DecodeBudget never lets the decodes in
flight together exceed their budget, serves them in order, and keeps a cancelled job's bytes reserved
until its thread really ends."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

from app.domain.media.decode_budget import DecodeBudget
from app.domain.media.processing import (
    MediaRejected,
    bytes_per_pixel,
    jpeg_coefficient_bytes,
    reduction_factor,
    thumbnail_cost,
    thumbnail_size,
)
from tests.kit.processes import ROOT

MiB = 1024 * 1024


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def test_bytes_per_pixel_is_what_pillow_allocates() -> None:
    # Pillow's storage (Imaging's pixelsize): one byte for 1/L/P, two for I;16, else four (RGB padded).
    sizes = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "LA": 4, "RGB": 4, "RGBA": 4, "CMYK": 4, "I": 4}
    assert {mode: bytes_per_pixel(mode) for mode in sizes} == sizes


@pytest.mark.parametrize("size", [(1600, 1200), (1200, 1600), (1000, 10), (10, 1000), (321, 7), (200, 100)])
def test_thumbnail_size_is_what_pillow_thumbnail_gives(size: tuple[int, int]) -> None:
    im = Image.new("L", size)
    im.thumbnail((320, 320))
    assert thumbnail_size(size, 320) == im.size


def test_reduction_factor_leaves_at_least_the_reducing_gap() -> None:
    assert reduction_factor(6300, 320) == 9  # 700 px left for the final resize: >= 2 x 320
    assert reduction_factor(640, 320) == 1
    assert reduction_factor(10, 3) == 1


def test_jpeg_coefficients_follow_the_sampling() -> None:
    # 4:2:0 (luma 2x2, chroma 1x1): 1.5 samples per pixel, 2 bytes each; 4:4:4 three; partial blocks padded.
    assert jpeg_coefficient_bytes((6000, 4000), [(2, 2), (1, 1), (1, 1)]) == 6000 * 4000 * 3
    assert jpeg_coefficient_bytes((6000, 4000), [(1, 1)] * 3) == 6000 * 4000 * 6
    assert jpeg_coefficient_bytes((9, 9), [(1, 1)]) == 16 * 16 * 2


def test_the_cost_of_a_png_bomb_is_its_decoded_frame_and_little_more() -> None:
    frame = 6300 * 6300 * 4
    cost = thumbnail_cost(encode(Image.new("RGBA", (6300, 6300), (9, 9, 9, 9)), "PNG"))
    assert frame <= cost <= frame + 20 * MiB  # strips and the small reduced copy: no second full-size copy
    grey = thumbnail_cost(encode(Image.new("L", (6300, 6300)), "PNG"))
    assert 6300 * 6300 <= grey <= 6300 * 6300 + 20 * MiB


def test_the_cost_of_a_jpeg_is_its_draft_scale_plus_libjpegs_coefficients() -> None:
    data = encode(Image.new("RGB", (4000, 3000)), "JPEG", subsampling=2)  # 4:2:0
    coefficients = 4000 * 3000 * 3
    cost = thumbnail_cost(data)
    assert coefficients < cost < coefficients + 24 * MiB  # decoded at 1/4 scale: 1000 x 750, ~3 MiB


def test_a_webp_costs_four_frames_and_the_limits_still_come_first() -> None:
    assert thumbnail_cost(encode(Image.new("RGB", (2000, 2000)), "WEBP")) >= 4 * 2000 * 2000 * 4
    with pytest.raises(MediaRejected, match="image too large"):
        thumbnail_cost(encode(Image.new("L", (20_001, 1)), "PNG"))
    with pytest.raises(MediaRejected, match="corrupt image"):
        thumbnail_cost(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)


# Each case in a fresh process: its peak RSS over the thumbnail, beside the cost read from the header.
_MEASURE = r"""
import io, json, sys, ctypes
from pathlib import Path
from PIL import Image
from app.domain.media.processing import inspect, thumbnail_cost, thumbnail_webp
fmt, mode, side, params = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
color = {"RGBA": (10, 200, 30, 128), "RGB": (10, 200, 30), "P": 3, "LA": (5, 100), "CMYK": (0, 255, 255, 0)}
im = Image.new(mode, (side, side), color[mode])
if params.pop("animated", False):
    params.update(save_all=True, append_images=[Image.new(mode, (side, side))], duration=100)
out = io.BytesIO(); im.save(out, fmt, **params); data = out.getvalue(); im.close(); del im
# A small one first: plugins and the WebP encoder loaded, glibc trimmed, then the peak counts from here.
warm = io.BytesIO(); Image.new("RGB", (64, 64)).save(warm, fmt); thumbnail_webp(warm.getvalue())
ctypes.CDLL("libc.so.6").malloc_trim(0)
def kib(field):
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in lines if line.startswith(field))
Path("/proc/self/clear_refs").write_text("5")
start = kib("VmRSS:")
inspect(data, None)
inspected = (kib("VmHWM:") - start) * 1024
Path("/proc/self/clear_refs").write_text("5")
start = kib("VmRSS:")
cost = thumbnail_cost(data)
thumbnail_webp(data)
print(json.dumps({"cost": cost, "peak": (kib("VmHWM:") - start) * 1024, "inspect": inspected}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(
    ("fmt", "mode", "side", "params"),
    [
        ("PNG", "RGBA", 6300, {}),
        ("PNG", "LA", 4000, {}),
        ("PNG", "RGBA", 3000, {"animated": True}),
        ("GIF", "P", 6000, {}),
        ("WEBP", "RGBA", 3000, {}),
        ("JPEG", "RGB", 5000, {"progressive": True}),
        ("JPEG", "CMYK", 4000, {"progressive": True}),
    ],
)
def test_the_cost_bounds_what_the_thumbnail_really_holds(
    fmt: str, mode: str, side: int, params: dict[str, object]
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, fmt, mode, str(side), json.dumps(params)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    measured = json.loads(result.stdout)
    print(
        f"{fmt} {mode} {side}px {params}: cost {measured['cost'] / MiB:.1f} MiB, "
        f"peak {measured['peak'] / MiB:.1f} MiB, inspect {measured['inspect'] / MiB:.1f} MiB"
    )
    assert measured["inspect"] <= 8 * MiB  # reading the type, size and orientation decodes no pixels
    assert measured["peak"] <= measured["cost"]
    assert measured["cost"] <= 2 * measured["peak"] + 16 * MiB  # and not so generous it wastes the budget


def hold(release: threading.Event, log: list[str], name: str) -> str:
    log.append(f"start {name}")
    assert release.wait(10)
    log.append(f"end {name}")
    return name


async def wait_for(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)


async def test_decodes_in_flight_never_exceed_the_budget_and_are_served_in_order() -> None:
    budget = DecodeBudget(100)
    gates = {name: threading.Event() for name in "abcd"}
    log: list[str] = []
    costs = {"a": 60, "b": 60, "c": 30, "d": 10}
    tasks = {}
    for name in "abcd":  # b waits for a; c and d, though they would fit beside a, wait behind b
        tasks[name] = asyncio.create_task(budget.run(costs[name], hold, gates[name], log, name))
        await asyncio.sleep(0.01)
    await wait_for(lambda: log == ["start a"])
    assert budget.in_use == 60
    gates["a"].set()
    await wait_for(lambda: {"start b", "start c", "start d"} <= set(log))
    assert budget.in_use == 100 and log.index("start b") < log.index("start c")
    for gate in gates.values():
        gate.set()
    assert [await tasks[name] for name in "abcd"] == list("abcd")
    assert budget.in_use == 0


async def test_a_cancelled_job_keeps_its_bytes_until_its_thread_ends_and_a_waiter_cancelled_takes_none() -> (
    None
):
    budget = DecodeBudget(100)
    first_gate, log = threading.Event(), []
    first = asyncio.create_task(budget.run(80, hold, first_gate, log, "first"))
    await wait_for(lambda: log == ["start first"])
    waiter = asyncio.create_task(budget.run(50, hold, threading.Event(), log, "waiter"))
    await asyncio.sleep(0.02)
    waiter.cancel()  # cancelled while waiting its turn: it never runs and holds nothing
    with pytest.raises(asyncio.CancelledError):
        await waiter
    first.cancel()  # arq's timeout: the thread cannot be stopped, so its 80 bytes stay reserved
    with pytest.raises(asyncio.CancelledError):
        await first
    assert budget.in_use == 80
    third_gate = threading.Event()
    third_gate.set()
    third = asyncio.create_task(budget.run(50, hold, third_gate, log, "third"))
    await asyncio.sleep(0.05)
    assert not third.done()  # 80 + 50 > 100 while the first thread still runs
    first_gate.set()
    assert await third == "third"
    assert budget.in_use == 0 and "start waiter" not in log


async def test_a_decode_larger_than_the_budget_is_never_admitted() -> None:
    budget = DecodeBudget(100)
    assert budget.admits(100) and not budget.admits(101)
    with pytest.raises(ValueError, match="never fits"):
        await budget.run(101, hold, threading.Event(), [], "too big")
    assert budget.in_use == 0
