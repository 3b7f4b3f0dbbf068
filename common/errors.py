"""Domain errors. Each maps to one gRPC status code and to CLI exit code 2.

Raise these from core code with a message that names the offending field or
file (and line); transports translate them in one place, never by hand.
"""

from __future__ import annotations


class MontessoriError(Exception):
    """Base class: an error the user can act on, reported without a traceback."""

    #: gRPC status code name this error maps to.
    code = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)

    def with_prefix(self, prefix: str) -> MontessoriError:
        """The same error with ``prefix.`` added to its field path (for nested configs)."""
        field = f"{prefix}.{self.field}" if self.field else prefix
        return type(self)(self.message, field=field)


class InvalidArgument(MontessoriError):
    """A config value, request field or input row is malformed or out of range."""

    code = "INVALID_ARGUMENT"


class NotFound(MontessoriError):
    """A named model folder, data file, artifact, job or loop does not exist."""

    code = "NOT_FOUND"


class FailedPrecondition(MontessoriError):
    """The input exists but the system is not in a state to use it (e.g. a model that cannot load)."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(MontessoriError):
    """A queue or memory limit was reached."""

    code = "RESOURCE_EXHAUSTED"


class Cancelled(MontessoriError):
    """The work was cancelled by its owner; no partial artifact was published."""

    code = "CANCELLED"


class Unavailable(MontessoriError):
    """The service cannot take work yet (still loading models) or is shutting down; retry later."""

    code = "UNAVAILABLE"
