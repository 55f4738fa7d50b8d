"""DICOM TLS (BCP 195) with dcmtk's echoscu and storescu: certificates from the settings
HTTPS uses, client certificates required when a CA is set, cleartext refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from dicomvault.archive import Archive
from dicomvault.dimse import DimseServer
from dicomvault.index.schema import instances
from dicomvault.synthetic import instance_bytes, uid
from tests.dimse.conftest import running_node
from tests.support.dcmtk import dcmtk

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture
def tls_node(archive: Archive, pki: Path) -> Iterator[DimseServer]:
    archive.settings = archive.settings.model_copy(
        update={
            "tls_cert_file": pki / "server.pem",
            "tls_key_file": pki / "server.key",
            "tls_ca_file": pki / "ca.pem",
        }
    )
    with running_node(archive, None, tls_port=0) as server:
        yield server


def _client(pki: Path) -> list[str | Path]:
    return ["+tls", pki / "client.key", pki / "client.pem", "+cf", pki / "ca.pem"]


def test_echo_and_store_over_tls_with_a_client_certificate(
    archive: Archive, tls_node: DimseServer, pki: Path, tmp_path: Path
) -> None:
    assert tls_node.port is None
    assert tls_node.tls_port
    done = dcmtk("echoscu", *_client(pki), "-aec", "DICOMVAULT", "127.0.0.1", tls_node.tls_port)
    assert done.returncode == 0, done.stdout + done.stderr
    sop = uid("tls/1")
    path = tmp_path / "one.dcm"
    path.write_bytes(
        instance_bytes(study_uid=uid("tls/st"), series_uid=uid("tls/se"), sop_uid=sop, size=8)
    )
    done = dcmtk(
        "storescu", *_client(pki), "-aec", "DICOMVAULT", "127.0.0.1", tls_node.tls_port, path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with archive.db.read() as conn:
        stored = conn.execute(select(instances.c.id).where(instances.c.sop_uid == sop)).first()
    assert stored is not None


def test_cleartext_and_anonymous_clients_are_refused(tls_node: DimseServer, pki: Path) -> None:
    assert tls_node.tls_port
    plain = dcmtk("echoscu", "-to", "3", "-aec", "DICOMVAULT", "127.0.0.1", tls_node.tls_port)
    assert plain.returncode != 0
    anonymous = dcmtk("echoscu", "+tla", "+cf", pki / "ca.pem", "-aec", "DICOMVAULT",
                      "127.0.0.1", tls_node.tls_port)  # fmt: skip
    assert anonymous.returncode != 0
    # The node keeps serving those who present a certificate.
    done = dcmtk("echoscu", *_client(pki), "-aec", "DICOMVAULT", "127.0.0.1", tls_node.tls_port)
    assert done.returncode == 0, done.stdout + done.stderr
