"""The replies of Lanyard's commands as typed, frozen dataclasses (docs/protocol.md).

Fields a reply carries that this client does not know are ignored: the contract grows
additively within v1, so an older client keeps working against a newer daemon.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar, Union

from .errors import DecodeError

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class User:
    """A user as callers see it. ``disabled_at`` is set while an admin has it disabled."""

    id: str
    username: str
    email: str | None
    email_verified: bool
    name: str | None
    picture: str | None
    created_at: str
    disabled_at: str | None = None


@dataclass(frozen=True, kw_only=True)
class Identity:
    """A user's account at one provider instance."""

    provider: str
    subject: str
    email: str | None
    email_verified: bool
    groups: list[str]


@dataclass(frozen=True, kw_only=True)
class UserWithIdentities(User):
    """A user with its linked identities (``user.get``)."""

    identities: list[Identity]


@dataclass(frozen=True, kw_only=True)
class Session:
    """A Lanyard session: a short-lived access token (an EdDSA JWT) and a refresh token."""

    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str


@dataclass(frozen=True, kw_only=True)
class LoginReply:
    """Where to send the browser, and the ``binding`` to keep in it (a cookie)."""

    authorization_url: str
    state: str
    binding: str
    expires_at: str
    handle: str | None = None


@dataclass(frozen=True, kw_only=True)
class CallbackReply:
    """A finished login: who logged in, through which identity, and their session."""

    user: User
    identity: Identity
    new_user: bool
    session: Session
    return_to: str | None


@dataclass(frozen=True, kw_only=True)
class DeviceLogin:
    """A started device login: show ``user_code`` and ``verification_uri`` to the user;
    keep ``handle`` secret and wait with it."""

    handle: str
    user_code: str
    verification_uri: str
    interval: int
    expires_at: str
    verification_uri_complete: str | None = None


@dataclass(frozen=True, kw_only=True)
class WaitReply:
    """A wait's answer: ``done`` holds the login's outcome, or it is ``None`` while the
    login is still pending (wait again)."""

    done: CallbackReply | None

    @property
    def pending(self) -> bool:
        return self.done is None


@dataclass(frozen=True, kw_only=True)
class Claims:
    """A session access token's claims. The user claims are ``None`` unless the deployment
    configures them (``[sessions.claims]``)."""

    iss: str
    aud: str
    sub: str
    exp: int
    iat: int
    jti: str
    sid: str
    email: str | None = None
    email_verified: bool | None = None
    username: str | None = None
    groups: list[str] | None = None
    groups_truncated: bool | None = None
    roles: list[str] | None = None


@dataclass(frozen=True, kw_only=True)
class Jwk:
    """One Ed25519 public key (RFC 8037)."""

    kty: str
    crv: str
    alg: str
    use: str
    kid: str
    x: str


@dataclass(frozen=True, kw_only=True)
class Jwks:
    """The keys that verify session access tokens, the current signing key first."""

    keys: list[Jwk]


@dataclass(frozen=True, kw_only=True)
class SessionView:
    """One of a user's sessions (a login and every refresh from it), as ``session.list``
    shows it."""

    session_id: str
    created_at: str
    refreshed_at: str | None
    expires_at: str | None
    provider: str | None
    client: str | None


@dataclass(frozen=True, kw_only=True)
class ProviderToken:
    """A user's working access token at a provider (``token.get``)."""

    access_token: str
    expires_at: str | None
    scopes: list[str]


@dataclass(frozen=True, kw_only=True)
class Unlinked:
    """The identity ``identity.unlink`` removed."""

    identity: Identity
    tokens_revoked: bool


@dataclass(frozen=True, kw_only=True)
class ProviderView:
    """A provider instance as admin replies show it: its ``config`` (the ``[[providers]]``
    table's keys, ``client_secret`` masked) and bookkeeping."""

    config: dict[str, Any]
    source: str
    version: int
    created_at: str | None
    updated_at: str | None


@dataclass(frozen=True, kw_only=True)
class EventCounts:
    published: int
    dropped: int
    queued: int


@dataclass(frozen=True, kw_only=True)
class ProviderStatus:
    id: str
    kind: str
    status: str
    circuit: str
    consecutive_failures: int
    stuck_plugin_calls: int
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class Status:
    """``admin.status``: what an operator checks first."""

    version: str
    uptime_secs: int
    requests_in_flight: int
    max_in_flight: int
    events: EventCounts
    shared_changes: str
    providers: list[ProviderStatus]


@dataclass(frozen=True, kw_only=True)
class UserPage:
    """A page of ``admin.user.list``; the list ends when ``next_cursor`` is ``None``."""

    users: list[User]
    next_cursor: str | None


@dataclass(frozen=True, kw_only=True)
class AdminUser:
    """``admin.user.get``: a user, its identities and its live sessions."""

    user: UserWithIdentities
    sessions: list[SessionView]


@dataclass(frozen=True, kw_only=True)
class UserDeletion:
    """What ``admin.user.delete`` erased."""

    user_id: str
    identities: int
    provider_tokens_revoked: int
    sessions_revoked: int


@dataclass(frozen=True, kw_only=True)
class Event:
    """An event from ``{prefix}.events.>``: its ``type`` (``user.logged_in``, ...), id and
    time, and the ids involved in ``fields``."""

    event_id: str
    type: str
    occurred_at: str
    fields: dict[str, Any]


def decode(cls: type[T], value: Any) -> T:
    """``value`` (a reply's JSON) as ``cls``, checked field by field."""
    if cls is ProviderView:
        return typing.cast(T, _provider_view(value))
    if cls is WaitReply:
        return typing.cast(T, _wait_reply(value))
    if cls is Event:
        return typing.cast(T, _event(value))
    return typing.cast(T, _decode(cls, value, cls.__name__))


def _decode(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _decode(inner[0], value, path)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise DecodeError(f"{path}: expected a list, got {value!r:.80}")
        return [_decode(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is Any:
        if origin is dict and not isinstance(value, dict):
            raise DecodeError(f"{path}: expected an object, got {value!r:.80}")
        return value
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, path)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    raise DecodeError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {value!r:.80}")


def _dataclass(cls: Any, value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise DecodeError(f"{path}: expected an object, got {value!r:.80}")
    hints = typing.get_type_hints(cls)
    args: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in value:
            args[field.name] = _decode(hints[field.name], value[field.name], f"{path}.{field.name}")
        elif field.default is dataclasses.MISSING:
            raise DecodeError(f"{path}: no {field.name}")
    return cls(**args)


_BOOKKEEPING = ("source", "version", "created_at", "updated_at")


def _provider_view(value: Any) -> ProviderView:
    if not isinstance(value, dict):
        raise DecodeError(f"ProviderView: expected an object, got {value!r:.80}")
    config = {k: v for k, v in value.items() if k not in _BOOKKEEPING}
    kept = {k: value.get(k) for k in _BOOKKEEPING}
    return _decode(ProviderView, {"config": config, **kept}, "ProviderView")  # type: ignore[no-any-return]


def _wait_reply(value: Any) -> WaitReply:
    status = value.get("status") if isinstance(value, dict) else None
    if status == "pending":
        return WaitReply(done=None)
    if status == "done":
        return WaitReply(done=_decode(CallbackReply, value, "WaitReply"))
    raise DecodeError(f"WaitReply: status {status!r}")


def _event(value: Any) -> Event:
    if not isinstance(value, dict):
        raise DecodeError(f"Event: expected an object, got {value!r:.80}")
    head = {k: value.get(k) for k in ("event_id", "type", "occurred_at")}
    fields = {k: v for k, v in value.items() if k not in head}
    return _decode(Event, {**head, "fields": fields}, "Event")  # type: ignore[no-any-return]
