"""The client: a typed call for every command of Lanyard's NATS protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import nats
import nats.errors
from nats.aio.client import Client as Nats

from . import models
from .errors import DecodeError, TransportError, refused
from .models import (
    AdminUser,
    CallbackReply,
    Claims,
    DeviceLogin,
    Event,
    Jwks,
    LoginReply,
    ProviderToken,
    ProviderView,
    Session,
    SessionView,
    Status,
    Unlinked,
    User,
    UserDeletion,
    UserPage,
    UserWithIdentities,
    WaitReply,
)

if TYPE_CHECKING:
    from .verify import Verifier

T = TypeVar("T")

CALLER_TOKEN_HEADER = "Lanyard-Caller-Token"
ADMIN_TOKEN_HEADER = "Lanyard-Admin-Token"

#: Every command's subject under ``{prefix}.v1.``; the admin ones under ``admin.``.
COMMANDS = (
    "login",
    "callback",
    "jwks",
    "session.verify",
    "session.refresh",
    "session.revoke",
    "session.list",
    "session.revoke_all",
    "user.get",
    "token.get",
    "identity.unlink",
    "device.start",
    "device.wait",
    "login.wait",
    "admin.keys.rotate",
    "admin.provider.create",
    "admin.provider.update",
    "admin.provider.patch",
    "admin.provider.delete",
    "admin.provider.get",
    "admin.provider.list",
    "admin.status",
    "admin.user.list",
    "admin.user.get",
    "admin.user.disable",
    "admin.user.enable",
    "admin.user.delete",
)


def _without_none(**fields: Any) -> dict[str, Any]:
    """A request body: the fields given, absent ones left out (the daemon refuses
    ``null`` for most)."""
    return {k: v for k, v in fields.items() if v is not None and v is not False}


class Client:
    """A connection to Lanyard's daemons over a NATS client.

    ``prefix`` is the daemons' ``nats.subject_prefix``; ``caller_token`` names this service
    on every request (``[[callers]]``); ``admin_token`` goes with admin commands; ``timeout``
    is how long a request waits for its answer, in seconds (the waits add their own).
    """

    def __init__(
        self,
        nc: Nats,
        *,
        prefix: str = "lanyard",
        caller_token: str | None = None,
        admin_token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.nats = nc
        self.prefix = prefix
        self.timeout = timeout
        self._caller_token = caller_token
        self._admin_token = admin_token
        self._owns_connection = False

    @classmethod
    async def connect(
        cls,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        prefix: str = "lanyard",
        caller_token: str | None = None,
        admin_token: str | None = None,
        timeout: float = 10.0,
        connect_within: float = 10.0,
        **nats_options: Any,
    ) -> Client:
        """Connects to NATS and returns a client whose :meth:`close` closes the connection.

        The first connection must succeed within ``connect_within`` seconds, else
        :class:`TransportError`; once connected, the client reconnects for as long as it
        lives. ``nats_options`` go to ``nats.connect`` (credentials, TLS, ...)."""
        options: dict[str, Any] = {
            "connect_timeout": min(5.0, connect_within),
            "max_reconnect_attempts": -1,
            **nats_options,
        }
        try:
            nc = await asyncio.wait_for(nats.connect(servers, **options), connect_within)
        except (TimeoutError, OSError, nats.errors.Error) as e:
            raise TransportError(f"cannot connect to NATS at {servers}: {e!r}") from e
        client = cls(nc, prefix=prefix, caller_token=caller_token, admin_token=admin_token, timeout=timeout)
        client._owns_connection = True
        return client

    async def close(self) -> None:
        """Closes the NATS connection if :meth:`connect` made it."""
        if self._owns_connection:
            try:
                await self.nats.drain()
            except nats.errors.Error:
                await self.nats.close()  # drain timed out: messages still unread go

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def subject(self, command: str) -> str:
        """A command's whole subject: ``lanyard.v1.login``, ``lanyard.v1.admin.status``."""
        return f"{self.prefix}.v1.{command}"

    async def call(
        self, command: str, body: Mapping[str, Any] | None = None, *, extra_timeout: float = 0.0
    ) -> Any:
        """Sends ``command`` (``"login"``, ``"admin.status"``: a name from :data:`COMMANDS`)
        with ``body``, and returns its reply's JSON, or raises its refusal."""
        headers: dict[str, str] = {}
        if self._caller_token is not None:
            headers[CALLER_TOKEN_HEADER] = self._caller_token
        if command.startswith("admin.") and self._admin_token is not None:
            headers[ADMIN_TOKEN_HEADER] = self._admin_token
        payload = json.dumps(dict(body or {})).encode()
        try:
            msg = await self.nats.request(
                self.subject(command), payload, timeout=self.timeout + extra_timeout, headers=headers or None
            )
        except nats.errors.NoRespondersError as e:
            raise TransportError(f"no Lanyard daemon serves {self.subject(command)}") from e
        except nats.errors.TimeoutError as e:
            raise TransportError(f"{command}: no answer in time", outcome_unknown=True) from e
        except nats.errors.Error as e:
            raise TransportError(f"{command}: {e}") from e
        try:
            reply = json.loads(msg.data)
        except ValueError as e:
            raise DecodeError(f"{command}: the reply is not JSON") from e
        if not isinstance(reply, dict):
            raise DecodeError(f"{command}: the reply is not an object")
        error = reply.get("error")
        if isinstance(error, dict):
            status = (msg.headers or {}).get("Nats-Service-Error-Code")
            raise refused(
                str(error.get("code", "")),
                str(error.get("message", "")),
                int(status) if status and status.isdigit() else None,
            )
        return reply

    async def _ask(
        self,
        cls: type[T],
        command: str,
        body: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        extra_timeout: float = 0.0,
    ) -> T:
        """``command``'s reply (or its field ``key``) as ``cls``."""
        reply = await self.call(command, body, extra_timeout=extra_timeout)
        if key is not None:
            if key not in reply:
                raise DecodeError(f"{command}: the reply has no {key}")
            reply = reply[key]
        return models.decode(cls, reply)

    def verifier(self, issuer: str = "lanyard", audience: str = "lanyard") -> Verifier:
        """A local verifier of session access tokens issued by ``issuer`` for ``audience``
        (the daemons' ``[sessions]``); see :class:`Verifier`."""
        from .verify import Verifier

        return Verifier(self, issuer=issuer, audience=audience)

    # Logins.

    async def login(
        self,
        provider: str,
        *,
        redirect_uri: str | None = None,
        scopes: list[str] | None = None,
        fetch_groups: bool = False,
        return_to: str | None = None,
        login_hint: str | None = None,
        prompt: str | None = None,
        link_session: str | None = None,
        hosted: bool = False,
    ) -> LoginReply:
        """Starts a login. Send the browser to ``authorization_url`` and keep ``binding``
        in that browser (an HttpOnly cookie) for the callback."""
        body = _without_none(
            provider=provider,
            redirect_uri=redirect_uri,
            scopes=scopes,
            fetch_groups=fetch_groups,
            return_to=return_to,
            login_hint=login_hint,
            prompt=prompt,
            link_session=link_session,
            hosted=hosted,
        )
        return await self._ask(LoginReply, "login", body)

    async def callback(
        self,
        *,
        query: str | None = None,
        state: str | None = None,
        code: str | None = None,
        error: str | None = None,
        error_description: str | None = None,
        iss: str | None = None,
        provider: str | None = None,
        redirect_uri: str | None = None,
        binding: str | None = None,
        client: str | None = None,
    ) -> CallbackReply:
        """Finishes a login with the provider's redirect: pass the callback URL's raw
        ``query``, the ``binding`` from the browser's cookie, and the ``provider`` and
        ``redirect_uri`` this callback route serves."""
        body = _without_none(
            query=query,
            state=state,
            code=code,
            error=error,
            error_description=error_description,
            iss=iss,
            provider=provider,
            redirect_uri=redirect_uri,
            binding=binding,
            client=client,
        )
        return await self._ask(CallbackReply, "callback", body)

    async def device_start(
        self,
        provider: str,
        *,
        scopes: list[str] | None = None,
        fetch_groups: bool = False,
        link_session: str | None = None,
        client: str | None = None,
    ) -> DeviceLogin:
        """Starts a device login (RFC 8628): show the user the code and URL, then wait."""
        body = _without_none(
            provider=provider,
            scopes=scopes,
            fetch_groups=fetch_groups,
            link_session=link_session,
            client=client,
        )
        return await self._ask(DeviceLogin, "device.start", body)

    async def device_wait(self, handle: str, timeout_secs: int | None = None) -> WaitReply:
        """Waits up to ``timeout_secs`` (default 25) for a device login's outcome."""
        return await self._wait("device.wait", handle, timeout_secs)

    async def login_wait(self, handle: str, timeout_secs: int | None = None) -> WaitReply:
        """Waits up to ``timeout_secs`` (default 25) for a hosted login's outcome."""
        return await self._wait("login.wait", handle, timeout_secs)

    async def _wait(self, command: str, handle: str, timeout_secs: int | None) -> WaitReply:
        waits = 25 if timeout_secs is None else timeout_secs
        body = _without_none(handle=handle, timeout_secs=timeout_secs)
        return await self._ask(WaitReply, command, body, extra_timeout=float(waits))

    async def wait_until_done(
        self, handle: str, *, hosted: bool = False, timeout_secs: int = 25
    ) -> CallbackReply:
        """Waits for a device login (or, with ``hosted``, a hosted login) until it ends:
        its outcome, or its refusal raised (:class:`~lanyard.LoginExpired`,
        :class:`~lanyard.AccessDenied`, ...). A wait whose answer did not come in time is
        asked again (waiting changes nothing); the login's own expiry bounds the whole."""
        if timeout_secs < 1:
            raise ValueError("timeout_secs must be at least 1")
        while True:
            try:
                if hosted:
                    reply = await self.login_wait(handle, timeout_secs)
                else:
                    reply = await self.device_wait(handle, timeout_secs)
            except TransportError as e:
                if e.outcome_unknown:
                    continue
                raise
            if reply.done is not None:
                return reply.done

    # Sessions.

    async def jwks(self) -> Jwks:
        """The keys that verify session access tokens."""
        return await self._ask(Jwks, "jwks")

    async def verify(self, token: str) -> Claims:
        """Asks a daemon to check an access token: also sees revocations and disabled
        users, unlike :meth:`Verifier.verify`."""
        return await self._ask(Claims, "session.verify", {"token": token})

    async def refresh(self, refresh_token: str) -> Session:
        """A new session for a refresh token (which is used up)."""
        return await self._ask(Session, "session.refresh", {"refresh_token": refresh_token}, key="session")

    async def revoke(
        self, refresh_token: str | None = None, *, user_id: str | None = None, session_id: str | None = None
    ) -> None:
        """Logs out: the session of ``refresh_token``, or ``user_id``'s session
        ``session_id``."""
        await self.call(
            "session.revoke",
            _without_none(refresh_token=refresh_token, user_id=user_id, session_id=session_id),
        )

    async def list_sessions(self, user_id: str) -> list[SessionView]:
        """The user's live sessions, oldest first."""
        reply = await self.call("session.list", {"user_id": user_id})
        return models.decode(_SessionList, reply).sessions

    async def revoke_all(self, user_id: str) -> list[str]:
        """Logs the user out everywhere: the ids of the sessions it ended."""
        reply = await self.call("session.revoke_all", {"user_id": user_id})
        return models.decode(_Revoked, reply).revoked

    # Users and provider tokens.

    async def user(self, user_id: str) -> UserWithIdentities:
        """A user with their identities."""
        return await self._ask(UserWithIdentities, "user.get", {"user_id": user_id}, key="user")

    async def token(self, user_id: str, provider: str) -> ProviderToken:
        """The user's working access token at ``provider`` (this caller must be one of
        its ``token_readers``)."""
        return await self._ask(ProviderToken, "token.get", {"user_id": user_id, "provider": provider})

    async def unlink(self, user_id: str, provider: str) -> Unlinked:
        """Unlinks the user's identity at ``provider``."""
        return await self._ask(Unlinked, "identity.unlink", {"user_id": user_id, "provider": provider})

    # Admin.

    async def rotate_keys(self) -> str:
        """Rotates the session signing key: the new key's id."""
        kid = (await self.call("admin.keys.rotate")).get("kid")
        if not isinstance(kid, str):
            raise DecodeError("admin.keys.rotate: the reply has no kid")
        return kid

    async def provider_create(self, instance: Mapping[str, Any]) -> ProviderView:
        """Creates a provider instance (a ``[[providers]]`` table as a mapping)."""
        return await self._ask(ProviderView, "admin.provider.create", instance, key="provider")

    async def provider_update(self, instance: Mapping[str, Any]) -> ProviderView:
        """Replaces a runtime provider instance."""
        return await self._ask(ProviderView, "admin.provider.update", instance, key="provider")

    async def provider_patch(self, id: str, changes: Mapping[str, Any]) -> ProviderView:
        """Changes some keys of a runtime provider instance (``None`` removes a key)."""
        return await self._ask(ProviderView, "admin.provider.patch", {**changes, "id": id}, key="provider")

    async def provider_delete(self, id: str) -> None:
        """Deletes a runtime provider instance."""
        await self.call("admin.provider.delete", {"id": id})

    async def provider_get(self, id: str) -> ProviderView:
        """One provider instance, its secret masked."""
        return await self._ask(ProviderView, "admin.provider.get", {"id": id}, key="provider")

    async def provider_list(self) -> list[ProviderView]:
        """Every provider instance: the config file's, then admin-created ones."""
        reply = await self.call("admin.provider.list")
        providers = reply.get("providers")
        if not isinstance(providers, list):
            raise DecodeError("admin.provider.list: no providers")
        return [models.decode(ProviderView, p) for p in providers]

    async def status(self) -> Status:
        """The answering daemon's health."""
        return await self._ask(Status, "admin.status")

    async def user_list(
        self,
        *,
        cursor: str | None = None,
        limit: int | None = None,
        email: str | None = None,
        username: str | None = None,
        provider: str | None = None,
    ) -> UserPage:
        """A page of users in id order, filtered; follow ``next_cursor``."""
        body = _without_none(cursor=cursor, limit=limit, email=email, username=username, provider=provider)
        return await self._ask(UserPage, "admin.user.list", body)

    async def admin_user(self, user_id: str) -> AdminUser:
        """A user with identities and live sessions."""
        return await self._ask(AdminUser, "admin.user.get", {"user_id": user_id})

    async def user_disable(self, user_id: str) -> User:
        """Disables a user: no logins, its sessions refused."""
        return await self._ask(User, "admin.user.disable", {"user_id": user_id}, key="user")

    async def user_enable(self, user_id: str) -> User:
        """Enables a disabled user."""
        return await self._ask(User, "admin.user.enable", {"user_id": user_id}, key="user")

    async def user_delete(self, user_id: str) -> UserDeletion:
        """Erases a user and everything of theirs."""
        return await self._ask(UserDeletion, "admin.user.delete", {"user_id": user_id})

    # Events.

    @asynccontextmanager
    async def events(self, *types: str) -> AsyncIterator[asyncio.Queue[Event]]:
        """Subscribes to events (``"user.logged_in"``, ...; all without ``types``) for the
        ``with`` block: a queue they arrive in. Core NATS delivery: at most once, while
        subscribed (docs/protocol.md, "Events")."""
        queue: asyncio.Queue[Event] = asyncio.Queue()

        async def deliver(msg: Any) -> None:
            # A body that is not an event is nothing a consumer could use: skipped.
            with contextlib.suppress(ValueError, DecodeError):
                queue.put_nowait(models.decode(Event, json.loads(msg.data)))

        subjects = [f"{self.prefix}.events.{t}" for t in types] or [f"{self.prefix}.events.>"]
        subscriptions = [await self.nats.subscribe(s, cb=deliver) for s in subjects]
        try:
            await self.nats.flush()
            yield queue
        finally:
            for subscription in subscriptions:
                # A connection closed meanwhile took its subscriptions with it.
                with contextlib.suppress(nats.errors.Error):
                    await subscription.unsubscribe()


# Reply wrappers the client unwraps.
@dataclass(frozen=True, kw_only=True)
class _SessionList:
    sessions: list[SessionView]


@dataclass(frozen=True, kw_only=True)
class _Revoked:
    revoked: list[str]
