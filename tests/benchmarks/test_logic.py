"""The benchmark's own arithmetic and instruments: percentiles, ratios, re-labelled
workloads, the retrieval reader, and when a measurement's files are removed."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest
from benchmarks.cpu import tree_cpu_s
from benchmarks.data import ROOT, relabel, variant
from benchmarks.measure import AS_STORED, percentile, stow_one_request, wado_study
from benchmarks.report import Figures, ratio

from benchmarks import bulk, leftovers
from dicomvault.archive import Archive
from dicomvault.synthetic import dataset, study_instances, to_bytes, uid


def test_files_of_a_measurement_go_when_the_round_ends(tmp_path: Path) -> None:
    first, second, alone = (tmp_path / name for name in ("first", "second", "alone"))
    for directory in (first, second, alone):
        (directory / "sub").mkdir(parents=True)
        (directory / "sub" / "file").write_bytes(b"x")
    with leftovers.deferred():
        leftovers.remove(first)
        with leftovers.deferred():
            leftovers.remove(second)
        assert not second.exists()  # the inner round is over
        assert first.exists()  # the outer one is not
    assert not first.exists()
    leftovers.remove(alone)  # outside any round: at once
    assert not alone.exists()


_BURNER = """
import subprocess, sys, time
burn = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.4: pass"
subprocess.run([sys.executable, "-c", burn], check=True)  # a child that ends, waited for
then_sleep = "\\nprint('burnt', flush=True)\\ntime.sleep(60)"
live = subprocess.Popen([sys.executable, "-c", burn + then_sleep])
print("ready", live.pid, flush=True)
time.sleep(60)
"""


def test_a_process_trees_cpu_counts_its_live_and_its_ended_descendants() -> None:
    root = subprocess.Popen([sys.executable, "-c", _BURNER], stdout=subprocess.PIPE, text=True)
    live = ""
    try:
        assert root.stdout is not None
        ready, live = root.stdout.readline().split()
        assert ready == "ready"
        assert root.stdout.readline().strip() == "burnt"  # the live grandchild sleeps now
        first = tree_cpu_s([root.pid])
        # Two children burned 0.4 s each: one ended (its time in the root's cutime), one
        # alive (counted as a process of the tree). Python's start-ups add a little.
        assert 0.75 <= first <= 1.6
        assert tree_cpu_s([]) == 0.0
        time.sleep(0.3)
        assert tree_cpu_s([root.pid]) - first < 0.1  # asleep now: nothing counted twice
    finally:
        if live:
            os.kill(int(live), signal.SIGKILL)
        root.kill()
        root.wait()


def test_percentile_interpolates_between_ranks() -> None:
    values = [10.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 10.0
    assert percentile([4.0], 95) == 4.0
    assert math.isnan(percentile([], 50))


def test_ratio_says_better_above_one_for_both_kinds_of_figure() -> None:
    assert ratio(200.0, 100.0, lower_is_better=False) == 2.0  # throughput: more is better
    assert ratio(5.0, 20.0, lower_is_better=True) == 4.0  # latency: less is better
    assert ratio(None, 1.0, lower_is_better=False) is None
    assert ratio(0.0, 1.0, lower_is_better=True) is None


def test_figures_keep_the_median_of_rounds() -> None:
    figures = Figures()
    for value in (3.0, 1.0, 2.0):
        figures.add("x", "dicomvault", value, "inst/s")
    figures.add("x", "orthanc", 4.0, "inst/s")
    [(label, unit, ours, theirs, r)] = figures.rows()
    assert (label, unit, ours, theirs, r) == ("x", "inst/s", 2.0, 4.0, 0.5)


@pytest.mark.parametrize("k", [1, 42, 99])
def test_a_variant_is_the_same_instance_under_new_valid_uids(k: int) -> None:
    original = to_bytes(
        dataset(
            study_uid=f"{ROOT}100.1.0.0.0",
            series_uid=f"{ROOT}100.1.0.1.0",
            sop_uid=f"{ROOT}100.1.0.1.1",
            size=8,
        )
    )
    changed = variant(original, k)
    assert len(changed) == len(original)
    ds = pydicom.dcmread(BytesIO(changed))
    assert ds.StudyInstanceUID == relabel(f"{ROOT}100.1.0.0.0", k)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert all(not part.startswith("0") or part == "0" for part in ds.SOPInstanceUID.split("."))
    assert ds.PixelData == pydicom.dcmread(BytesIO(original)).PixelData


def test_the_retrieval_reader_counts_every_byte_the_server_sends(
    archive: Archive, server: str
) -> None:
    for data in study_instances("bench-read", per_series=4, size=256):
        archive.ingestor.ingest(BytesIO(data))
    url = f"{server}/dicom-web/studies/{uid('bench-read/study')}"
    whole = httpx.get(url, headers={"Accept": AS_STORED})
    assert whole.status_code == 200
    assert wado_study(url)["bytes"] == len(whole.content) > 4 * 256 * 256 * 2
    with pytest.raises(RuntimeError, match="WADO-RS 404"):
        wado_study(f"{server}/dicom-web/studies/{uid('bench-read/absent')}")


def test_a_whole_study_goes_in_one_streamed_request(archive: Archive, server: str) -> None:
    """The one-request figure sends every part, and a refused request is an error."""
    files = list(study_instances("bench-one", per_series=5, size=64))
    assert stow_one_request(f"{server}/dicom-web", files) > 0
    with archive.db.read() as conn:
        stored = conn.exec_driver_sql("SELECT count(*) FROM instances").scalar_one()
    assert stored == len(files)
    with pytest.raises(RuntimeError, match="STOW-RS of 1 parts: 400"):
        stow_one_request(f"{server}/dicom-web", [b"not DICOM"])


def test_the_import_figure_leaves_out_the_commands_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, size in (("a.dcm", 1_000_000), ("b.dcm", 3_000_000)):
        (folder / name).write_bytes(bytes(size))
    # The command timed three times: the archive made, start-up alone, the import.
    times = iter([1.5, 0.8, 2.8])
    monkeypatch.setattr(bulk, "_timed_import", lambda env, where: next(times))
    assert bulk.dicomvault_import({}, folder) == pytest.approx(
        {"instances_per_s": 1.0, "mb_per_s": 2.0, "start_up_s": 0.8}  # 2 files in 2.8 - 0.8 s
    )


def test_the_import_command_is_run_for_real_and_its_failure_is_an_error() -> None:
    files = list(study_instances("bench-import", per_series=3))
    folder = bulk.folder_of(files)
    try:
        with leftovers.deferred():
            assert bulk.dicomvault_import({}, folder)["start_up_s"] > 0.1
            (folder / "cut.dcm").write_bytes(files[0][:300])  # invalid: the command exits 1
            with pytest.raises(RuntimeError, match="dicomvault import failed"):
                bulk.dicomvault_import({}, folder)
    finally:
        leftovers.remove(folder)
