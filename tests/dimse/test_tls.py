"""DICOM TLS (BCP 195) with dcmtk's echoscu and storescu: certificates from the settings
HTTPS uses, client certificates required when a CA is set, cleartext refused."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from dicomvault import serving
from dicomvault.archive import Archive
from dicomvault.dimse import DimseServer, registry
from dicomvault.index.schema import instances
from dicomvault.synthetic import instance_bytes, uid
from tests.dimse.conftest import running_node
from tests.support.dcmtk import dcmtk, storescp

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


def test_c_move_to_a_destination_over_dicom_tls(
    archive: Archive, tls_node: DimseServer, pki: Path, tmp_path: Path
) -> None:
    # (dcmtk's movescu has no TLS: the request comes in cleartext, to another port.)
    """The archive reaches a known AE registered with --tls over DICOM TLS, verifying its
    certificate against the CA and presenting its own (storescp requires one)."""
    sop = uid("tls/move/1")
    data = instance_bytes(
        study_uid=uid("tls/move"), series_uid=uid("tls/move/s"), sop_uid=sop, size=8
    )
    archive.ingestor.ingest(BytesIO(data))
    options = ["+tls", str(pki / "server.key"), str(pki / "server.pem"),
               "+cf", str(pki / "ca.pem"), "-rc"]  # fmt: skip
    with storescp(tmp_path / "dest", "SECURE_PACS", tls=options) as port:
        registry.add(archive.db, registry.KnownAE("SECURE_PACS", "127.0.0.1", port, tls=True))
        keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid('tls/move')}"]
        with running_node(archive) as plain:
            done = dcmtk("movescu", "-S", "-aec", "DICOMVAULT", "-aem", "SECURE_PACS",
                         *keys, "127.0.0.1", plain.port)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    [received] = list((tmp_path / "dest").iterdir())
    assert dcmread(received).SOPInstanceUID == sop


def test_tls_on_a_listening_socket_the_processes_share(archive: Archive, pki: Path) -> None:
    """`serve --processes N` shares one DICOM TLS listening socket: each node accepts
    from it and makes the handshake on the connection it took."""
    archive.settings = archive.settings.model_copy(
        update={
            "tls_cert_file": pki / "server.pem",
            "tls_key_file": pki / "server.key",
            "tls_ca_file": pki / "ca.pem",
        }
    )
    listener = serving._listening_socket("127.0.0.1", 0)
    port = listener.getsockname()[1]
    nodes = [DimseServer(archive, "127.0.0.1", None, tls_port=port, listeners={port: listener})
             for _ in range(2)]  # fmt: skip
    for node in nodes:
        node.start()
    try:
        for _ in range(4):
            done = dcmtk("echoscu", *_client(pki), "-aec", "DICOMVAULT", "127.0.0.1", port)
            assert done.returncode == 0, done.stderr
    finally:
        for node in nodes:
            node.stop()
        listener.close()
