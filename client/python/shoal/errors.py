"""Exceptions, one class per gRPC status a Shoal server returns.

Every error the client raises is a :class:`ShoalError`; its ``code`` is the
gRPC status code and ``message`` the server's text (which names the field
at fault for bad input).
"""
from __future__ import annotations

from typing import Dict, Optional, Type

import grpc


class ShoalError(Exception):
    """An error from a Shoal server or the connection to it."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        # The call was retried (after UNAVAILABLE) before this error: a
        # change may have committed on an earlier attempt.
        self.retried = False

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.code, self.message))


class InvalidArgument(ShoalError):
    """The request is malformed: a wrong dimension, a bad filter, a limit passed."""


class NotFound(ShoalError):
    """The collection (or alias) does not exist."""


class AlreadyExists(ShoalError):
    """The collection already exists."""


class Unauthenticated(ShoalError):
    """No credentials, or credentials the server does not accept."""


class PermissionDenied(ShoalError):
    """The credentials do not allow this call."""


class ResourceExhausted(ShoalError):
    """A limit was hit (a response too large, a disk too full, a rate)."""


class FailedPrecondition(ShoalError):
    """The cluster is not in a state to do this now (a change in progress)."""


class Unavailable(ShoalError):
    """The server cannot be reached or has no leader now (retried first)."""


class DeadlineExceeded(ShoalError):
    """The call took longer than its timeout."""


class Internal(ShoalError):
    """A server-side failure."""


_BY_CODE: Dict[grpc.StatusCode, Type[ShoalError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: Internal,
}


def from_rpc_error(e: grpc.RpcError) -> ShoalError:
    """The exception for a failed call."""
    code: Optional[grpc.StatusCode] = e.code() if hasattr(e, "code") else None
    code = code or grpc.StatusCode.UNKNOWN
    details = e.details() if hasattr(e, "details") else str(e)
    return _BY_CODE.get(code, ShoalError)(code, details or "")
