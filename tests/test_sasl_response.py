"""The hand-written SASL responses are byte for byte what kio writes, for every
version Shoal offers and any content."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.protocol.apis import SUPPORTED, encode_response
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader
from shoal.protocol.sasl_response import SaslAuthenticateAnswer, SaslHandshakeAnswer

CODES = [
    ErrorCode.none,
    ErrorCode.illegal_sasl_state,
    ErrorCode.unsupported_sasl_mechanism,
    ErrorCode.sasl_authentication_failed,
]
codes = st.sampled_from([int(c.value) for c in CODES])
i32 = st.integers(-(2**31), 2**31 - 1)


def _header(api_key: int, version: int, correlation_id: int) -> RequestHeader:
    return RequestHeader(api_key, version, correlation_id, "c", 0)


@pytest.mark.parametrize("version", range(SUPPORTED[17][1], SUPPORTED[17][2] + 1))
@settings(max_examples=20, deadline=None)
@given(code=codes, mechanisms=st.lists(st.text(max_size=40), max_size=5), cid=i32)
def test_handshake_same_bytes_as_kio(
    version: int, code: int, mechanisms: list[str], cid: int
) -> None:
    ours = SaslHandshakeAnswer(version, code, tuple(mechanisms))
    kio = Schema(17, version).SaslHandshakeResponse(
        error_code=ErrorCode(code), mechanisms=tuple(mechanisms)
    )
    assert encode_response(_header(17, version, cid), ours) == encode_response(
        _header(17, version, cid), kio
    )


@pytest.mark.parametrize("version", range(SUPPORTED[36][1], SUPPORTED[36][2] + 1))
@settings(max_examples=20, deadline=None)
@given(
    code=codes,
    message=st.text(max_size=300) | st.none(),
    auth=st.binary(max_size=300),
    lifetime=st.integers(0, 2**40),
    cid=i32,
)
def test_authenticate_same_bytes_as_kio(
    version: int, code: int, message: str | None, auth: bytes, lifetime: int, cid: int
) -> None:
    ours = SaslAuthenticateAnswer(version, code, message, auth, lifetime)
    kio = Schema(36, version).SaslAuthenticateResponse(
        error_code=ErrorCode(code),
        error_message=message,
        auth_bytes=auth,
        session_lifetime=datetime.timedelta(milliseconds=lifetime),
    )
    assert encode_response(_header(36, version, cid), ours) == encode_response(
        _header(36, version, cid), kio
    )
