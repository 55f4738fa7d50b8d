"""The header is read from where the layout found the data set begins, not by
`dcmread` from the top: over every file of the corpus the archive takes, both give
the same Header, and only a deflated data set still goes through `dcmread`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO, Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicomvault.errors import InvalidInstance
from dicomvault.parsing import Header, Layout, parse_header, read_layout
from dicomvault.parsing import header as header_module
from tests.parsing.test_dicom_json import CORPUS


def _by_dcmread(fp: IO[bytes], _layout: Layout) -> Dataset:
    fp.seek(0)
    return pydicom.dcmread(fp, stop_before_pixels=True)


def _parsed(data: bytes) -> tuple[Layout, Header | str]:
    layout = read_layout(io.BytesIO(data))
    try:
        return layout, parse_header(io.BytesIO(data), layout)
    except InvalidInstance as exc:
        return layout, f"refused: {exc}"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_the_header_is_the_one_dcmread_gives(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = path.read_bytes()
    try:
        read_layout(io.BytesIO(data))
    except InvalidInstance:
        pytest.skip("not a file the archive takes")
    calls: list[Any] = []
    real_dcmread = pydicom.dcmread

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real_dcmread(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counted)
    layout, fast = _parsed(data)
    assert bool(calls) == (layout.transfer_syntax == DeflatedExplicitVRLittleEndian)
    monkeypatch.setattr(header_module, "_read_dataset", _by_dcmread)
    _, reference = _parsed(data)
    assert fast == reference
