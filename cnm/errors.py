"""cnm's one error vocabulary, shared by every service and client.

Services raise these; the server interceptor (cnm.server) turns them into a
gRPC status with a google.rpc.ErrorInfo detail, and clients turn a failed
call back into the same class with :func:`from_rpc_error`. Nothing else in
the code base maps errors to status codes.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "cnm"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
# An error echoes what it was given capped to this many characters, and its whole
# message and details are bounded too: gRPC refuses trailing metadata over 8 KiB, so a
# long value echoed whole would reach the client as RESOURCE_EXHAUSTED, not as the error.
MAX_SHOWN = 64
MAX_MESSAGE_BYTES = 1024
MAX_METADATA_VALUE = 128
MAX_METADATA_BYTES = 1024


def capped(value: object, limit: int = MAX_SHOWN) -> str:
    """``value`` as text, cut to ``limit`` characters plus "..." when longer: every value
    an error echoes goes through this."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _bounded_message(message: str) -> str:
    encoded = message.encode()
    if len(encoded) <= MAX_MESSAGE_BYTES:
        return message
    return encoded[: MAX_MESSAGE_BYTES - 3].decode(errors="ignore") + "..."


class CnmError(Exception):
    """Base of every error cnm reports to a caller.

    ``reason`` is a stable UPPER_SNAKE_CASE word a program may switch on
    (AIP-193); ``metadata`` gives the values the message names.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason = "UNKNOWN"

    def __init__(self, message: str, *, reason: str | None = None, **metadata: object) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = {key: str(value) for key, value in metadata.items()}


class InvalidArgument(CnmError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(CnmError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(CnmError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(CnmError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(CnmError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(CnmError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class PermissionDenied(CnmError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(CnmError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class Internal(CnmError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


class DeadlineExceeded(CnmError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


_BY_CODE: dict[grpc.StatusCode, type[CnmError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        PermissionDenied,
        Unauthenticated,
        Internal,
        DeadlineExceeded,
    )
}


def to_grpc_status(error: CnmError) -> grpc.Status:
    """The gRPC status for ``error``, with an ErrorInfo detail; message and metadata bounded
    (see MAX_MESSAGE_BYTES), so that the client can always read it."""
    metadata, size = {}, 0
    for key, value in sorted(error.metadata.items()):
        key, value = capped(key), capped(value, MAX_METADATA_VALUE)
        size += len(key.encode()) + len(value.encode())
        if size > MAX_METADATA_BYTES:
            break
        metadata[key] = value
    info = error_details_pb2.ErrorInfo(reason=capped(error.reason), domain=DOMAIN,
                                       metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=error.code.value[0], message=_bounded_message(error.message),
                               details=[detail])
    return rpc_status.to_status(status)


def answered_by_peer(error: grpc.RpcError) -> bool:
    """Whether a failed call is the peer's answer (cnm's errors carry a status detail),
    rather than the transport's (no connection, reset)."""
    return any(key == _STATUS_DETAILS_KEY for key, _ in error.trailing_metadata() or ())


def from_rpc_error(error: grpc.RpcError) -> CnmError:
    """The CnmError a failed call stands for (client side).

    Works for both sync and aio calls. A connection failure comes back as
    :class:`Unavailable`.
    """
    code = error.code()
    message = error.details() or code.name
    reason, metadata = None, {}
    for key, value in error.trailing_metadata() or ():
        if key != _STATUS_DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason, metadata = info.reason, dict(info.metadata)
    cls = _BY_CODE.get(code, CnmError)
    converted = cls(message, reason=reason, **metadata)
    if cls is CnmError:
        converted.code = code
    return converted


def with_context(error: CnmError, what: str) -> CnmError:
    """``error`` with ``what`` in front of its message: same class, reason and metadata.

    Raise the result ``from error`` so the cause stays chained.
    """
    converted = type(error)(f"{what}: {error.message}", reason=error.reason, **error.metadata)
    converted.code = error.code
    return converted
