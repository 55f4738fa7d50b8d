"""What the DICOM node does once per association, and what it leaves out
(dimse/server.py)."""

from __future__ import annotations

import copy
import logging

import pytest
from pynetdicom import _config

from dicomvault.archive import Archive
from dicomvault.dimse import DimseServer
from dicomvault.dimse import server as server_module
from tests.dimse.conftest import running_node


@pytest.mark.parametrize(
    ("level", "handlers"), [(logging.WARNING, "none"), (logging.INFO, "standard")]
)
def test_the_node_binds_pynetdicoms_logging_handlers_only_where_they_would_log(
    archive: Archive, monkeypatch: pytest.MonkeyPatch, level: int, handlers: str
) -> None:
    """Without them the node's associations send their responses the quick way."""
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "unset")
    logger = logging.getLogger("pynetdicom")
    before = logger.level
    logger.setLevel(level)
    try:
        DimseServer(archive, "127.0.0.1", None)
    finally:
        logger.setLevel(before)
    assert handlers == _config.LOG_HANDLER_LEVEL


def test_each_association_gets_contexts_of_its_own(archive: Archive) -> None:
    """pynetdicom deep-copies the server's contexts for every association; the quick
    copy must be as independent as a deep one."""
    with running_node(archive) as node:
        contexts = node._servers[0].contexts
        copied = copy.deepcopy(contexts)
    assert isinstance(contexts, server_module._Contexts)  # copied the quick way
    assert len(copied) == len(contexts) > 100
    for original, twin in zip(contexts, copied, strict=True):
        assert twin is not original
        assert vars(twin) == vars(original)
        assert twin.transfer_syntax is not original.transfer_syntax
    first = contexts[0]
    syntaxes, role = list(first.transfer_syntax), first.scp_role
    copied[0]._transfer_syntax.append("1.2.3")
    copied[0].scp_role = not role
    assert (first.transfer_syntax, first.scp_role) == (syntaxes, role)
