"""The greyscale display pipeline of rendered images: integer frames mapped through a
table of their values give the levels the pipeline gives pixel by pixel, and the
standard's linear window."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomvault import render
from dicomvault.render import VoiFunction, Window

_grey_levels = render._grey_levels

RNG = np.random.default_rng(7)


def _attrs(**values: object) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored = 16
    ds.PixelRepresentation = 0
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def _lut(descriptor: list[int], data: list[int]) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.LUTData = data
    return item


def _ct(dtype: type, low: int, high: int) -> np.ndarray:
    """A 512x512 frame whose values span [low, high], both ends present."""
    frame = RNG.integers(low, high + 1, size=(512, 512), dtype=np.int64)
    frame[0, 0], frame[-1, -1] = low, high
    return frame.astype(dtype)


CASES = [
    # (frame, attributes, asked window), each taking the table
    (
        "CT, stored window",
        _ct(np.uint16, 0, 4095),
        _attrs(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400),
        None,
    ),
    (
        "signed, wider than int16 can subtract",
        _ct(np.int16, -30000, 30000),
        _attrs(PixelRepresentation=1, RescaleSlope=1, RescaleIntercept=0),
        None,
    ),
    (
        "the frame's range, a negative slope",
        _ct(np.int16, -2000, 3000),
        _attrs(PixelRepresentation=1, RescaleSlope=-2, RescaleIntercept=7),
        None,
    ),
    (
        "MONOCHROME1, a sigmoid window asked",
        _ct(np.uint16, 100, 900),
        _attrs(PhotometricInterpretation="MONOCHROME1", RescaleSlope=0.5, RescaleIntercept=3),
        Window(300, 250, VoiFunction.SIGMOID),
    ),
    (
        "a one-value threshold window",
        _ct(np.uint8, 0, 255),
        _attrs(BitsStored=8),
        Window(128, 1, VoiFunction.LINEAR),
    ),
    (
        "a VOI LUT Sequence",
        _ct(np.uint16, 0, 255),
        _attrs(
            BitsStored=8, VOILUTSequence=Sequence([_lut([256, 0, 8], list(range(255, -1, -1)))])
        ),
        None,
    ),
]


@pytest.mark.parametrize(
    ("frame", "attrs", "window"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_integer_frames_through_a_table_give_the_pixel_by_pixel_levels(
    frame: np.ndarray, attrs: Dataset, window: Window | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = render._grey_levels(frame, attrs, window or render._stored_window(attrs))
    computed: list[tuple[int, ...]] = []

    def spied(values: np.ndarray, *args: object) -> np.ndarray:
        computed.append(values.shape)
        return _grey_levels(values, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(render, "_grey_levels", spied)
    levels = render._grey_bytes(frame, attrs, window)
    assert levels.dtype == np.uint8
    assert levels.shape == frame.shape
    assert np.array_equal(levels, expected)
    assert len(np.unique(levels)) > 1  # not a blank image that would match anything
    span = int(frame.max()) - int(frame.min()) + 1
    assert computed == [(span,)]  # the pipeline ran on the table, once


def test_a_linear_window_is_the_standards_formula() -> None:
    frame = _ct(np.uint16, 0, 1000)
    levels = render._grey_bytes(
        frame, _attrs(RescaleSlope=1, RescaleIntercept=-500), Window(0, 201)
    )
    values = frame.astype(np.float64) - 500
    # PS3.3 C.11.2.1.2.1: below c - 0.5 - (w-1)/2 the lowest, above c - 0.5 + (w-1)/2 the highest
    expected = np.clip((values - (0 - 0.5)) / (201 - 1) + 0.5, 0, 1)
    assert np.array_equal(levels, np.rint(expected * 255).astype(np.uint8))


def test_a_modality_lut_that_moves_the_ends_goes_pixel_by_pixel() -> None:
    # Without a window the frame's own range is of the values it has: the value 1,
    # absent, maps to the LUT's highest output and must not set the range.
    frame = np.array([[0, 2], [2, 0]], dtype=np.uint16)
    lut = _lut([4, 0, 16], [10, 5000, 20, 0])
    levels = render._grey_bytes(frame, _attrs(ModalityLUTSequence=Sequence([lut])), None)
    assert levels.tolist() == [[0, 255], [255, 0]]
