"""Local verification of session access tokens: EdDSA JWTs checked against the daemons'
JWKS, held in memory.

The cache follows the same rules as the Rust client's ``Verifier``:

- a token whose ``kid`` the cache lacks makes it fetch the JWKS again, at most once a
  second (tokens with made-up key ids cannot make it fetch more often), and one fetch at a
  time (verifications that need a fetch share the one in flight);
- with :meth:`Verifier.follow_rotations`, every ``keys.rotated`` event makes it fetch at
  once, until the JWKS lists the new key;
- a key the JWKS stops listing stays for an hour (its tokens expire before that), so a
  daemon whose change feed lags cannot make the cache forget a key another daemon signs
  with.

A revocation is not seen locally: :meth:`lanyard.Client.verify` asks a daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jwt

from . import models
from .errors import DecodeError, InvalidToken, LanyardError
from .models import Claims

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("lanyard")

#: How often (seconds) unknown key ids may make the verifier fetch the JWKS.
REFETCH_EVERY = 1.0
#: How long (seconds) a key the JWKS stopped listing stays in the cache.
KEEP_UNLISTED = 3600.0
#: The claims a session access token must carry.
REQUIRED = ["exp", "iss", "aud", "sub"]


class Verifier:
    """Verifies session access tokens locally; one per process is enough (share it).

    ``clock`` is the monotonic clock the refetch limit and the cache's ages are read from
    (``time.monotonic``); token expiry is checked against the wall clock, as JWTs say.
    """

    def __init__(
        self,
        client: Client,
        *,
        issuer: str,
        audience: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.issuer = issuer
        self.audience = audience
        self._clock = clock
        self._keys: dict[str, tuple[Any, float]] = {}
        self._attempted: float | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._subscription: Any = None
        self._following = False

    @property
    def kids(self) -> list[str]:
        """The key ids it holds now."""
        return list(self._keys)

    async def verify(self, token: str) -> Claims:
        """The token's claims if its signature is one of the daemons' keys and its issuer,
        audience and expiry hold; else :class:`~lanyard.InvalidToken`."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise InvalidToken(str(e)) from e
        if header.get("alg") != "EdDSA":
            raise InvalidToken(f"{header.get('alg')!r} is not EdDSA")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("no kid")
        if kid not in self._keys:
            await self.fetch()
        if kid not in self._keys:
            raise InvalidToken(f"no key {kid} in the JWKS")
        try:
            claims = jwt.decode(
                token,
                self._keys[kid][0],
                algorithms=["EdDSA"],
                audience=self.audience,
                issuer=self.issuer,
                leeway=0,
                # `iat` is not checked (nor by the Rust client): a daemon whose clock is a
                # second ahead must not make fresh tokens fail.
                options={"require": REQUIRED, "verify_iat": False},
            )
            return models.decode(Claims, claims)
        except (jwt.PyJWTError, DecodeError) as e:
            raise InvalidToken(str(e)) from e

    async def fetch(self, *, force: bool = False) -> None:
        """Fetches the JWKS into the cache: with ``force`` at once, else only if the last
        attempt is over :data:`REFETCH_EVERY` old. A fetch already in flight is joined
        instead of starting another."""
        if self._inflight is not None and not self._inflight.done():
            await asyncio.shield(self._inflight)
            return
        now = self._clock()
        if not force and self._attempted is not None and now - self._attempted < REFETCH_EVERY:
            return
        self._attempted = now
        self._inflight = asyncio.ensure_future(self._fetch())
        # Its error reaches every verification awaiting it; if all of them were cancelled,
        # it is read here, so asyncio does not report it as never retrieved.
        self._inflight.add_done_callback(lambda done: done.cancelled() or done.exception())
        await asyncio.shield(self._inflight)

    async def _fetch(self) -> None:
        jwks = await self._client.jwks()
        now = self._clock()
        for jwk in jwks.keys:
            if (jwk.kty, jwk.crv) != ("OKP", "Ed25519"):
                log.warning("a JWKS key that is not Ed25519 (kid %s): skipped", jwk.kid)
                continue
            try:
                key = jwt.PyJWK({"kty": jwk.kty, "crv": jwk.crv, "x": jwk.x}, algorithm="EdDSA").key
            except jwt.PyJWTError as e:
                log.warning("a JWKS key that is not Ed25519 (kid %s): %s", jwk.kid, e)
                continue
            self._keys[jwk.kid] = (key, now)
        self._keys = {kid: held for kid, held in self._keys.items() if now - held[1] < KEEP_UNLISTED}

    async def follow_rotations(self) -> None:
        """Fetches the JWKS, then again at every ``keys.rotated`` event naming a key it
        lacks, until :meth:`close`. Calling it again does nothing."""
        if self._following:
            return
        self._following = True
        nc = self._client.nats
        self._subscription = await nc.subscribe(
            f"{self._client.prefix}.events.keys.rotated", cb=self._rotated
        )
        await nc.flush()
        await self.fetch(force=True)

    async def _rotated(self, msg: Any) -> None:
        try:
            kid = json.loads(msg.data).get("kid")
        except (ValueError, AttributeError):
            return
        if not isinstance(kid, str):
            return
        # The daemon that answers the fetch may not have the key yet (its change feed is
        # moments behind the one that rotated): ask again, a bounded number of times.
        for _ in range(10):
            if kid in self._keys:
                return
            try:
                await self.fetch(force=True)
            except LanyardError as e:
                log.warning("cannot fetch the JWKS after a key rotation: %s", e)
            if kid in self._keys:
                return
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        """Stops following rotations."""
        if self._subscription is not None:
            with contextlib.suppress(Exception):  # its connection may be closed already
                await self._subscription.unsubscribe()
            self._subscription = None
        self._following = False
