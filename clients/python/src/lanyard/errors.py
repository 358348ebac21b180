"""What a call can fail with.

Every error is a :class:`LanyardError`. A refusal by the daemon is a :class:`Refused`
carrying the documented code (docs/protocol.md, "Errors"); each code also has its own
subclass, so a service can catch exactly the refusal it handles::

    try:
        reply = await lanyard.callback(query=query, binding=binding)
    except lanyard.InvalidState:
        ...  # the login was used, expired, or began in another browser: start again
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """A documented error code, as the reply's ``error.code`` carries it."""

    BAD_REQUEST = "bad_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNKNOWN_PROVIDER = "unknown_provider"
    INVALID_STATE = "invalid_state"
    ACCESS_DENIED = "access_denied"
    PROVIDER_ERROR = "provider_error"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    INVALID_ID_TOKEN = "invalid_id_token"
    ACCOUNT_EXISTS = "account_exists"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    REAUTH_REQUIRED = "reauth_required"
    CONFLICT = "conflict"
    USER_DISABLED = "user_disabled"
    LOGIN_EXPIRED = "login_expired"
    RATE_LIMITED = "rate_limited"
    INTERNAL = "internal"


class LanyardError(Exception):
    """Any failure of a Lanyard call."""


class Refused(LanyardError):
    """The daemon refused the request with a documented code.

    ``code`` is an :class:`ErrorCode`, or the code's text when the daemon is newer than this
    client and sends one it does not know (new codes may appear within v1).
    """

    code: ErrorCode | str

    def __init__(self, code: ErrorCode | str, message: str, status: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class TransportError(LanyardError):
    """NATS could not carry the request, or no daemon answered.

    ``outcome_unknown`` is true when the request may have reached a daemon (it timed out):
    a command that changes something may then have happened.
    """

    def __init__(self, message: str, *, outcome_unknown: bool = False):
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class DecodeError(LanyardError):
    """A reply that is not what the contract says."""


class InvalidToken(LanyardError):
    """A session access token that does not verify locally (signature, issuer, audience,
    expiry, or a key the daemons do not have)."""


class BadRequest(Refused):
    """``bad_request``: malformed or invalid fields (the message names the field)."""


class PayloadTooLarge(Refused):
    """``payload_too_large``: the body is over the daemon's ``max_request_bytes``."""


class UnknownProvider(Refused):
    """``unknown_provider``: no such provider instance."""


class InvalidState(Refused):
    """``invalid_state``: the login's state is unknown, used, expired, for another provider
    or redirect URI, or its ``binding`` is missing or not this browser's."""


class AccessDenied(Refused):
    """``access_denied``: the user or the provider refused."""


class ProviderError(Refused):
    """``provider_error``: the provider answered with an error or an unusable answer."""


class ProviderUnavailable(Refused):
    """``provider_unavailable``: the provider timed out, failed, or its circuit is open."""


class InvalidIdToken(Refused):
    """``invalid_id_token``: the provider's ID token failed validation."""


class AccountExists(Refused):
    """``account_exists``: another user holds this email and linking is not trusted."""


class Unauthorized(Refused):
    """``unauthorized``: a session or refresh token that is not valid, expired or revoked."""


class NotFound(Refused):
    """``not_found``: no such user, session, identity or provider."""


class Forbidden(Refused):
    """``forbidden``: this caller may not do that (read this provider's tokens, say)."""


class ReauthRequired(Refused):
    """``reauth_required``: the stored provider refresh token no longer works; the user must
    log in again."""


class Conflict(Refused):
    """``conflict``: the change clashes with what exists."""


class UserDisabled(Refused):
    """``user_disabled``: an admin disabled the user."""


class LoginExpired(Refused):
    """``login_expired``: a device or hosted login ran out of time."""


class RateLimited(Refused):
    """``rate_limited``: too many requests at once; retry shortly."""


class Internal(Refused):
    """``internal``: a bug in the daemon or a plugin."""


REFUSALS: dict[ErrorCode, type[Refused]] = {
    ErrorCode.BAD_REQUEST: BadRequest,
    ErrorCode.PAYLOAD_TOO_LARGE: PayloadTooLarge,
    ErrorCode.UNKNOWN_PROVIDER: UnknownProvider,
    ErrorCode.INVALID_STATE: InvalidState,
    ErrorCode.ACCESS_DENIED: AccessDenied,
    ErrorCode.PROVIDER_ERROR: ProviderError,
    ErrorCode.PROVIDER_UNAVAILABLE: ProviderUnavailable,
    ErrorCode.INVALID_ID_TOKEN: InvalidIdToken,
    ErrorCode.ACCOUNT_EXISTS: AccountExists,
    ErrorCode.UNAUTHORIZED: Unauthorized,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.FORBIDDEN: Forbidden,
    ErrorCode.REAUTH_REQUIRED: ReauthRequired,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.USER_DISABLED: UserDisabled,
    ErrorCode.LOGIN_EXPIRED: LoginExpired,
    ErrorCode.RATE_LIMITED: RateLimited,
    ErrorCode.INTERNAL: Internal,
}


def refused(code: str, message: str, status: int | None = None) -> Refused:
    """The exception for a refusal with ``code``: its own class, or :class:`Refused` itself
    for a code this client does not know."""
    try:
        known = ErrorCode(code)
    except ValueError:
        return Refused(code, message, status)
    return REFUSALS[known](known, message, status)
