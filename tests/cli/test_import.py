"""`dicomvault import`, `config show` and bad settings, run as the real command in a subprocess.

The command gets the backend pair under test through DICOMVAULT_* variables,
so the import runs on SQLite + a local directory and on PostgreSQL + S3.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
import typer

from dicomvault.archive import Archive
from dicomvault.cli.common import settings_from
from dicomvault.config import Settings
from dicomvault.model.levels import Level
from dicomvault.query import QueryRequest, search
from dicomvault.synthetic import dataset, to_bytes, uid
from tests.support.cli import command_env, dicomvault
from tests.support.dicom_files import good


def _summary(output: str) -> dict[str, int]:
    """The counts of the summary table: {"stored": 5, "not DICOM": 1, ...}."""
    rows = re.findall(r"^[│|]\s*([a-zA-Z][a-zA-Z ]*?)\s*[│|]\s*(\d+)\s*[│|]\s*$", output, re.M)
    return {name: int(count) for name, count in rows}


def _problems(output: str) -> dict[str, str]:
    """Problem lines: {source: "status: detail"}."""
    found = {}
    for line in output.splitlines():
        match = re.match(r"^(invalid|conflict|failed) (.+?): (.*)$", line)
        if match:
            found[match.group(2)] = f"{match.group(1)}: {match.group(3)}"
    return found


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Folders of DICOM files, a non-DICOM file, an invalid DICOM file and a zip."""
    root = tmp_path / "deep" / "down" / "scans"
    (root / "ct" / "day1").mkdir(parents=True)
    (root / "notes").mkdir()
    for i in range(3):
        ds = dataset(
            study_uid=uid("folder/st"),
            series_uid=uid("folder/se"),
            sop_uid=uid(f"folder/{i}"),
            instance_number=i + 1,
            size=16,
        )
        (root / "ct" / "day1" / f"{i}.dcm").write_bytes(to_bytes(ds))
    (root / "notes" / "readme.txt").write_text("not an image\n")
    (root / "ct" / "broken.dcm").write_bytes(good("broken")[:700])
    with zipfile.ZipFile(root / "batch.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a/one.dcm", good("zipped1"))
        archive.writestr("a/two.dcm", good("zipped2"))
        archive.writestr("../../evil.dcm", good("evil"))  # would land in tmp_path/deep
        archive.writestr("bomb.dcm", bytes(8 * 1024 * 1024))  # 8 MiB of zeros: ratio > 1000
    return root


def _study_uids(settings: Settings) -> set[str]:
    archive = Archive.open(settings)
    try:
        result = search(archive.db, QueryRequest(level=Level.STUDY), max_results=100)
    finally:
        archive.close()
    return {m["0020000D"]["Value"][0] for m in result.matches}


def test_import_a_tree_with_zip_and_bad_files_then_again(
    settings: Settings, tree: Path, tmp_path: Path
) -> None:
    env = command_env(settings)
    first = dicomvault("import", str(tree), env=env, cwd=tree)
    assert first.returncode == 1, first.stdout + first.stderr  # invalid files exist
    assert _summary(first.stdout) == {"stored": 6, "not DICOM": 1, "invalid": 2}
    problems = _problems(first.stdout)
    assert set(problems) == {f"{tree}/ct/broken.dcm", f"{tree}/batch.zip!bomb.dcm"}
    assert re.match(r"invalid: .*(truncated|declares)", problems[f"{tree}/ct/broken.dcm"])
    assert "compression ratio" in problems[f"{tree}/batch.zip!bomb.dcm"]

    # The zip member named ../../evil.dcm was stored as an instance, never written out.
    assert not list(tmp_path.rglob("evil.dcm"))
    assert _study_uids(settings) == {
        uid("folder/st"),
        uid("zipped1/st"),
        uid("zipped2/st"),
        uid("evil/st"),
    }

    again = dicomvault("import", str(tree), env=env)
    assert again.returncode == 1
    assert _summary(again.stdout) == {"already stored": 6, "not DICOM": 1, "invalid": 2}

    # Only good files: exit status 0, everything already there.
    clean = dicomvault("import", str(tree / "ct" / "day1"), str(tree / "notes"), env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert _summary(clean.stdout) == {"already stored": 3, "not DICOM": 1}


def test_a_damaged_zip_member_is_reported_and_the_import_goes_on(
    settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    with zipfile.ZipFile(folder / "damaged.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bad.dcm", good("damaged"))
        archive.writestr("fine.dcm", good("fine"))
    data = bytearray((folder / "damaged.zip").read_bytes())
    data[60] ^= 0xFF  # inside the first member's deflate stream
    (folder / "damaged.zip").write_bytes(bytes(data))
    (folder / "scan[red].dcm").write_bytes(good("bracket")[:300])  # rich markup in a name

    result = dicomvault("import", str(folder), env=command_env(settings))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert _summary(result.stdout) == {"stored": 1, "invalid": 2}
    problems = _problems(result.stdout)
    assert re.match(r"invalid: damaged zip member", problems[f"{folder}/damaged.zip!bad.dcm"])
    assert f"{folder}/scan[red].dcm" in problems  # printed as named, not as markup
    assert _study_uids(settings) == {uid("fine/st")}


def test_a_missing_path_exits_2(settings: Settings, tmp_path: Path) -> None:
    result = dicomvault("import", str(tmp_path / "nowhere"), env=command_env(settings))
    assert result.returncode == 2
    assert "no such file or folder" in result.stdout + result.stderr


def test_config_show_masks_passwords_and_secrets(tmp_path: Path) -> None:
    env = command_env(
        Settings(data_dir=tmp_path / "data"),
        DICOMVAULT_DATABASE_URL="postgresql://archive:pg-Secret-1@db.example:5432/vault",
        DICOMVAULT_STORAGE_URL="s3://bucket/prefix",
        DICOMVAULT_S3_ENDPOINT_URL="https://key:s3-Secret-2@objects.example:9000",
        DICOMVAULT_S3_SECRET_ACCESS_KEY="s3-Secret-3",
    )
    result = dicomvault("config", "show", env=env)
    assert result.returncode == 0, result.stderr
    for secret in ("pg-Secret-1", "s3-Secret-2", "s3-Secret-3"):
        assert secret not in result.stdout
    shown = json.loads(result.stdout)
    assert shown["database_url"] == "postgresql://archive:***@db.example:5432/vault"
    assert shown["s3_endpoint_url"] == "https://key:***@objects.example:9000"
    assert shown["s3_secret_access_key"] == "**********"
    assert shown["storage_url"] == "s3://bucket/prefix"
    assert shown["data_dir"] == str(tmp_path / "data")

    in_query = dicomvault(
        "config",
        "show",
        env={**env, "DICOMVAULT_DATABASE_URL": "postgresql://archive@db/vault?password=pg-Q-4"},
    )
    assert "pg-Q-4" not in in_query.stdout
    assert json.loads(in_query.stdout)["database_url"] == (
        "postgresql://archive@db/vault?password=***"
    )


def test_an_invalid_setting_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    env = command_env(Settings(data_dir=tmp_path / "data"), DICOMVAULT_HTTP_PORT="abc")
    for args in (("config", "show"), ("import", str(tmp_path))):
        result = dicomvault(*args, env=env)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr == (
            "invalid configuration:\n"
            "  http_port = 'abc' (DICOMVAULT_HTTP_PORT): Input should be a valid integer, "
            "unable to parse string as an integer\n"
        )
    assert not (tmp_path / "data").exists()  # refused before anything was created


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DICOMVAULT_HTTP_PORT", "70000", r"http_port = '70000' .*65535"),
        ("DICOMVAULT_DUPLICATE_POLICY", "maybe", r"'reject', 'overwrite' or 'keep-versions'"),
        ("DICOMVAULT_MAX_REQUEST_BYTES", "[big]", r"max_request_bytes = '\[big\]' "),
        ("DICOMVAULT_CORS_ORIGINS", "[nope", r"cors_origins"),
    ],
)
def test_every_invalid_setting_is_named_with_its_value(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    expected: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(typer.Exit) as exited:
        settings_from(None)
    assert exited.value.exit_code == 2
    assert re.search(expected, capsys.readouterr().err)
