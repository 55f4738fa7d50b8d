"""`dicomvault serve` as a process: the DICOM node next to DICOMweb, port and AE title from env."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from dicomvault import serving
from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.dimse import DimseServer
from dicomvault.dimse import server as server_module
from dicomvault.synthetic import instance_bytes, uid
from tests.support.dcmtk import dcmtk
from tests.support.live import free_port


def test_serve_starts_the_dicom_node_next_to_dicomweb(tmp_path: Path) -> None:
    exe = shutil.which("dicomvault")
    assert exe
    http, dicom = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")}
    env |= {"DICOMVAULT_DICOM_PORT": str(dicom), "DICOMVAULT_AE_TITLE": "VAULT_E2E"}
    args = [exe, "serve", "--data-dir", str(tmp_path), "--http-port", str(http)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while dcmtk("echoscu", "-aec", "VAULT_E2E", "127.0.0.1", dicom).returncode != 0:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "no C-ECHO answer from dicomvault serve"
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{http}/health").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=15)[0].decode()
    assert proc.returncode == 0, output  # stopped its workers and DICOM node, then exited
    assert "Finished server process" in output
    assert f"DIMSE AE VAULT_E2E at 127.0.0.1:{dicom}" in output


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _wait_echo(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while dcmtk("echoscu", "-aec", "DICOMVAULT", "127.0.0.1", port).returncode != 0:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, "no C-ECHO answer from dicomvault serve"
        time.sleep(0.2)


def _serve_processes(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    exe = shutil.which("dicomvault")
    assert exe
    http, dicom = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")}
    args = [exe, "serve", "--data-dir", str(tmp_path), "--http-port", str(http),
            "--dicom-port", str(dicom), "--processes", "3"]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_echo(dicom, proc)
    return proc, http, dicom


def test_several_processes_serve_the_same_ports_and_stop_together(tmp_path: Path) -> None:
    proc, http, dicom = _serve_processes(tmp_path)
    try:
        children = _children(proc.pid)
        assert len(children) == 2
        files = tmp_path / "send"
        files.mkdir()
        for number in range(12):
            (files / f"{number}.dcm").write_bytes(instance_bytes(
                study_uid=uid("mp/st"), series_uid=uid("mp/se"), sop_uid=uid(f"mp/{number}"),
                instance_number=number, size=8))  # fmt: skip
        # Several associations and requests, spread over the processes.
        for _ in range(3):
            done = dcmtk("storescu", "-aec", "DICOMVAULT", "+sd", "127.0.0.1", dicom, files)
            assert done.returncode == 0, done.stderr
        for _ in range(6):
            found = httpx.get(f"http://127.0.0.1:{http}/dicom-web/studies/{uid('mp/st')}/instances")
            assert found.status_code == 200
            assert len(found.json()) == 12
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert output.count("Finished server process") == 3
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)


def test_a_dying_process_stops_the_server_with_status_1(tmp_path: Path) -> None:
    proc, _, _ = _serve_processes(tmp_path)
    try:
        children = _children(proc.pid)
        os.kill(children[0], signal.SIGKILL)
        output = proc.communicate(timeout=30)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, output
    assert "ended with status -9: stopping" in output
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)


def test_processes_sharing_the_dicom_port_take_connections_in_turn(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes on one shared listening socket, as the processes of `serve
    --processes 2` are: four modalities connecting at once get two each."""
    # Waits long enough that thread scheduling cannot decide it, and not capped
    # (the cap would make one and two connections wait alike).
    monkeypatch.setattr(server_module, "_WAIT_PER_CONNECTION", 0.2)
    monkeypatch.setattr(server_module, "_LONGEST_WAIT", 1.0)
    listener = serving._listening_socket("127.0.0.1", 0)
    port = listener.getsockname()[1]
    nodes = [DimseServer(archive, "127.0.0.1", port, listeners={port: listener})
             for _ in range(2)]  # fmt: skip
    for node in nodes:
        node.start()
    peers = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        deadline = time.monotonic() + 10
        while sum(len(node._servers[0]._serving) for node in nodes) < 4:
            assert time.monotonic() < deadline, "the connections were not all accepted"
            time.sleep(0.05)
        assert [len(node._servers[0]._serving) for node in nodes] == [2, 2]
    finally:
        for peer in peers:
            peer.close()
        for node in nodes:
            node.stop()
        listener.close()


def test_a_dicom_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    exe = shutil.which("dicomvault")
    assert exe
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    dicom = taken.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")}
    args = [exe, "serve", "--data-dir", str(tmp_path), "--http-port", str(free_port()),
            "--dicom-port", str(dicom), "--processes", "2"]  # fmt: skip
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{dicom}" in done.stderr


@pytest.mark.skipif(not hasattr(socket, "TCP_NOTSENT_LOWAT"), reason="no TCP_NOTSENT_LOWAT here")
def test_http_connections_hold_little_unsent_data(tmp_path: Path) -> None:
    """Every connection the HTTP listener accepts inherits its TCP_NOTSENT_LOWAT, which
    keeps a retrieval's writes small enough for the event loop (see serving.py)."""
    settings = Settings(data_dir=tmp_path, host="127.0.0.1", http_port=0)
    listener = serving.http_listener(settings)
    try:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with client, accepted:
            lowat = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
        assert lowat == serving.HTTP_NOTSENT_LOWAT
    finally:
        listener.close()


def test_connections_on_a_shared_listening_socket_get_tcp_nodelay() -> None:
    """asyncio's loop (uvicorn's when uvloop is missing) sets TCP_NODELAY only on sockets
    whose protocol is TCP; the listener names it, so its connections get it too."""
    listener = serving._listening_socket("127.0.0.1", 0)
    seen: list[int] = []

    async def main() -> None:
        def accepted(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname())
            while not seen:
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert seen == [1]
