"""The synthetic workload: generated once, cached as Part 10 files, re-labelled per round.

Every file carries UIDs under `ROOT + "100."`; `variant(data, k)` swaps the last
two digits of that component for another pair without changing any length, so each measurement sends
instances the server has never seen (a re-sent instance would hit the duplicate
fast path of either server) without regenerating pixel data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import UID

from dicomvault.synthetic import dataset, to_bytes

__all__ = [
    "ROOT",
    "Workload",
    "ct_study",
    "large_instance",
    "large_study",
    "load",
    "relabel",
    "small_study",
    "variant",
]

ROOT = "1.2.826.0.1.3680043.10.1432.77."
CACHE = Path(__file__).parent / ".cache"
_PLACEHOLDER = f"{ROOT}100.".encode()


@dataclass(frozen=True)
class Workload:
    ct: list[bytes]  # CT-like 512x512 16-bit, 10 studies of 100
    small: list[bytes]  # 64x64; the first 1,000 are one series, the rest 10 per study

    @property
    def big_series_study(self) -> str:
        return _uid("small", 0, 0, 0)

    @property
    def big_series(self) -> str:
        return _uid("small", 0, 1, 0)


def _uid(kind: str, study: int, series: int, instance: int) -> str:
    code = {"ct": 1, "small": 2, "large": 3}[kind]
    return f"{ROOT}100.{code}.{study}.{series}.{instance}"


def variant(data: bytes, k: int) -> bytes:
    """The same instance under UIDs of variant `k` (1..99): same length, new identity."""
    return data.replace(_PLACEHOLDER, f"{ROOT}1{k:02d}.".encode())


def relabel(uid: str, k: int) -> str:
    """A UID of the cached workload as it reads in variant `k`."""
    return uid.replace(f"{ROOT}100.", f"{ROOT}1{k:02d}.")


def ct_study(study: int) -> str:
    return _uid("ct", study, 0, 0)


def small_study(study: int) -> str:
    return _uid("small", study, 0, 0)


def large_study() -> str:
    return _uid("large", 0, 0, 0)


def _make(kind: str, study: int, index: int, size: int, series_index: int = 1) -> bytes:
    ds = dataset(
        study_uid=_uid(kind, study, 0, 0),
        series_uid=_uid(kind, study, series_index, 0),
        sop_uid=_uid(kind, study, series_index, index + 1),
        patient_id=f"P{kind[:2].upper()}{study:05d}",
        patient_name=f"Synthetic^{kind.title()}{study}",
        size=size,
        instance_number=index + 1,
        study_date=f"2024{(study % 12) + 1:02d}{(study % 28) + 1:02d}",
        accession=f"A{kind[:1].upper()}{study:06d}",
        modality="CT" if kind != "small" or study % 2 == 0 else "MR",
        seed=study * 1000 + index,
    )
    return to_bytes(ds)


def _cached(name: str, build: list[tuple[str, int, int, int]]) -> list[bytes]:
    folder = CACHE / name
    if folder.is_dir() and len(list(folder.glob("*.dcm"))) == len(build):
        return [p.read_bytes() for p in sorted(folder.glob("*.dcm"))]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for number, (kind, study, index, size) in enumerate(build):
        data = _make(kind, study, index, size)
        (folder / f"{number:06d}.dcm").write_bytes(data)
        out.append(data)
    return out


def load(ct: int = 1000, small: int = 5000) -> Workload:
    """The workload, from the cache when it is there (generating CT data takes a minute)."""
    ct_files = _cached(f"ct-{ct}", [("ct", i // 100, i % 100, 512) for i in range(ct)])
    big = min(small, 1000)
    spec = [("small", 0, i, 64) for i in range(big)]
    spec += [("small", 1 + (i // 10), i % 10, 64) for i in range(small - big)]
    return Workload(ct=ct_files, small=_cached(f"small-{small}", spec))


def large_instance(megabytes: int) -> Path:
    """One multi-frame 512x512 16-bit instance of about `megabytes`, as a cached file."""
    frames = max(1, megabytes * 1024 * 1024 // (512 * 512 * 2))
    path = CACHE / f"large-{frames}.dcm"
    if not path.exists():
        ds = dataset(
            study_uid=_uid("large", 0, 0, 0),
            series_uid=_uid("large", 0, 1, 0),
            sop_uid=UID(_uid("large", 0, 1, 1)),
            size=512,
            frames=frames,
        )
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        ds.save_as(tmp, enforce_file_format=True)
        tmp.rename(path)
    return path
