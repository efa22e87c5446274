"""The private parts of pysmb that transports/cifs.py uses.

The cifs transport reaches below pysmb's public surface (SMB2 requests pysmb
has no call for).  These tests fail loudly, naming the internal, when an
upgrade of pysmb changes one of them, before a capture kernel finds out.
The version pin in pyproject.toml is checked here too.  (The sftp and ssh
transports use no library: the OpenSSH client and :mod:`transports.sftpwire`.)
"""
from __future__ import annotations

import inspect
import re
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from conftest import REPO

smb = pytest.importorskip("smb")

from smb import base as smb_base  # noqa: E402
from smb import smb2_structs  # noqa: E402
from smb.SMBConnection import SMBConnection  # noqa: E402


def parameters(function: Callable) -> List[str]:
    return list(inspect.signature(function).parameters)


def source(obj: object) -> str:
    return inspect.getsource(obj)  # type: ignore[arg-type]


# --- pysmb (transports/cifs.py) ------------------------------------------------------------------

@pytest.mark.parametrize("name,params", [
    ("_getNextMID_SMB2", ["self"]),
    ("_pollForNetBIOSPacket", ["self", "timeout"]),
    ("_sendSMBMessage_SMB2", ["self", "smb_message"]),
])
def test_pysmb_internal_method(name: str, params: List[str]) -> None:
    method = getattr(SMBConnection, name, None)
    assert method is not None, f"pysmb {version('pysmb')} has no SMBConnection.{name}: transports/cifs.py needs it"
    assert parameters(method) == params, f"pysmb changed SMBConnection.{name}{inspect.signature(method)}"


def test_pysmb_selects_the_smb2_sender_as_sendSMBMessage() -> None:
    assert "self._sendSMBMessage = self._sendSMBMessage_SMB2" in source(smb_base)


@pytest.mark.parametrize("attribute", ["pending_requests", "connected_trees", "is_signing_active", "session_id",
                                       "max_write_size", "max_read_size"])
def test_pysmb_connection_state_cifs_reads(attribute: str) -> None:
    assert re.search(rf"self\.{attribute}\s*=", source(smb_base)), \
        f"pysmb no longer keeps self.{attribute} on its connection"


def test_pysmb_pending_request_signature() -> None:
    assert parameters(smb_base._PendingRequest.__init__) == \
        ["self", "mid", "expiry_time", "callback", "errback", "kwargs"]


@pytest.mark.parametrize("name,params", [
    ("SMB2CloseRequest", ["self", "fid", "flags"]),
    ("SMB2CreateRequest", ["self", "filename", "file_attributes", "access_mask", "share_access", "create_disp",
                           "create_options", "impersonation", "oplock", "create_context_data"]),
    ("SMB2QueryInfoRequest", ["self", "fid", "flags", "additional_info", "info_type", "file_info_class",
                              "input_buf", "output_buf_len"]),
    ("SMB2ReadRequest", ["self", "fid", "read_offset", "read_len", "min_read_len"]),
    ("SMB2SetInfoRequest", ["self", "fid", "additional_info", "info_type", "file_info_class", "data"]),
    ("SMB2TreeConnectRequest", ["self", "path"]),
    ("SMB2WriteRequest", ["self", "fid", "data", "offset", "remaining_len", "flags"]),
    ("SMB2Message", ["self", "payload"]),
])
def test_pysmb_smb2_structures(name: str, params: List[str]) -> None:
    cls = getattr(smb2_structs, name, None)
    assert cls is not None, f"pysmb has no smb2_structs.{name}"
    assert parameters(cls.__init__) == params, f"pysmb changed {name}{inspect.signature(cls.__init__)}"


def test_pysmb_wire_layouts_match_the_hand_built_write() -> None:
    """cifs.py sends unsigned WRITEs itself with these layouts ([MS-SMB2] 2.2.1.2, 2.2.21)."""
    from transports import cifs
    message = smb2_structs.SMB2Message
    assert cifs._SMB2_HEADER.format == message.HEADER_STRUCT_FORMAT + message.SYNC_HEADER_STRUCT_FORMAT[1:]
    assert cifs._SMB2_WRITE.format == smb2_structs.SMB2WriteRequest.STRUCTURE_FORMAT
    assert "credit_re" in source(smb2_structs), "pysmb no longer decodes the credits granted (credit_re)"
    assert "def encode" in source(message)


def test_pysmb_raises_an_unhandled_session_setup_status_with_the_reply() -> None:
    """cifs.session_setup_status reads STATUS_ACCESS_DENIED (a server that requires encryption)
    from the ProtocolError pysmb raises for a SESSION_SETUP status it has no case for."""
    from smb.smb_structs import ProtocolError
    from transports import cifs
    assert parameters(ProtocolError.__init__) == ["self", "message", "data_buf", "smb_message"]
    assert "self.smb_message = smb_message" in source(ProtocolError.__init__)
    handler = source(smb_base.SMB._updateState_SMB2)
    assert "raise ProtocolError('Unknown status value (0x%08X) in SMB_COM_SESSION_SETUP_ANDX" in handler
    assert "0xc0000022" not in handler.lower(), "pysmb now handles STATUS_ACCESS_DENIED in SESSION_SETUP itself"
    reply = smb2_structs.SMB2Message()
    reply.command, reply.status = cifs.SMB2_COM_SESSION_SETUP, cifs.STATUS_ACCESS_DENIED
    assert cifs.session_setup_status(ProtocolError("x", b"", reply)) == cifs.STATUS_ACCESS_DENIED


# --- the pins -------------------------------------------------------------------------------------

def _pin(name: str) -> str:
    text = (REPO / "pyproject.toml").read_text()
    match = re.search(rf'"{name}([^"]*)"', text)
    assert match, f"{name} is not in pyproject.toml"
    return match.group(1)


def test_pysmb_is_pinned_to_the_series_cifs_was_written_for() -> None:
    pin = _pin("pysmb")
    assert "<1.3" in pin and version("pysmb").startswith("1.2.")


def test_cifs_refuses_a_pysmb_without_its_internals() -> None:
    from transports import cifs
    assert set(cifs._PYSMB_INTERNALS) <= {n for n in dir(SMBConnection)}
    assert Path(cifs.__file__).read_text().count("_PYSMB_INTERNALS") >= 2
