"""Local verification against a real daemon's JWKS: the cache fetches again for an
unknown key id (at most once a second, one fetch at a time) and at a key rotation."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flows import log_in

import lanyard


def _b64(part: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def forged(kid: str, **claims: object) -> str:
    """A token signed by a key the daemons never had."""
    key = Ed25519PrivateKey.generate()
    body = {"iss": "lanyard", "aud": "lanyard", "sub": "usr_x", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, key, algorithm="EdDSA", headers={"kid": kid})


async def test_a_session_token_verifies_locally(client: lanyard.Client) -> None:
    done = await log_in(client)
    verifier = client.verifier("lanyard", "lanyard")
    claims = await verifier.verify(done.session.access_token)
    assert claims.sub == done.user.id and claims.aud == "lanyard" and claims.sid

    token = done.session.access_token
    head, body, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    for bad in (f"{head}.{body}.{flipped}", "not a token", forged(verifier.kids[0])):
        with pytest.raises(lanyard.InvalidToken):
            await verifier.verify(bad)
    # Another algorithm under a real key id: never accepted, whatever the key.
    kid = verifier.kids[0]
    unsigned = ".".join(_b64(part) for part in ({"alg": "none", "kid": kid}, {"sub": "usr_x"})) + "."
    hmac = jwt.encode({"sub": "usr_x"}, "a" * 32, algorithm="HS256", headers={"kid": kid})
    for bad in (unsigned, hmac):
        with pytest.raises(lanyard.InvalidToken, match="not EdDSA"):
            await verifier.verify(bad)
    with pytest.raises(lanyard.InvalidToken, match=r"(?i)audience"):
        await client.verifier("lanyard", "another-audience").verify(token)
    with pytest.raises(lanyard.InvalidToken, match=r"(?i)issuer"):
        await client.verifier("someone-else", "lanyard").verify(token)


async def test_unknown_key_ids_fetch_at_most_once_a_second(client: lanyard.Client) -> None:
    requests = await client.nats.subscribe(client.subject("jwks"))
    try:
        await client.nats.flush()
        clock = FakeClock()
        verifier = lanyard.Verifier(client, issuer="lanyard", audience="lanyard", clock=clock)

        for _ in range(3):
            with pytest.raises(lanyard.InvalidToken, match="no key"):
                await verifier.verify(forged("made-up"))
        assert requests.pending_msgs == 1, "one fetch for three unknown key ids within a second"

        # A new signing key, and a token it signed: a second later, twenty verifications
        # of it at once share one fetch, and every one of them succeeds.
        kid = await client.rotate_keys()
        done = await log_in(client)
        assert jwt.get_unverified_header(done.session.access_token)["kid"] == kid
        clock.now += 1.5
        results = await asyncio.gather(*(verifier.verify(done.session.access_token) for _ in range(20)))
        assert {claims.sub for claims in results} == {done.user.id}
        assert requests.pending_msgs == 2

        # Once the key is held, no more fetches.
        await verifier.verify(done.session.access_token)
        assert requests.pending_msgs == 2
    finally:
        await requests.unsubscribe()


async def test_a_rotation_is_followed_before_any_token_shows_the_new_key(client: lanyard.Client) -> None:
    verifier = client.verifier()
    await verifier.follow_rotations()
    await verifier.follow_rotations()  # again: nothing more
    before = set(verifier.kids)

    kid = await client.rotate_keys()
    assert kid not in before
    # The keys.rotated event makes the verifier fetch: wait for it (bounded).
    deadline = asyncio.get_running_loop().time() + 30
    while kid not in verifier.kids:
        assert asyncio.get_running_loop().time() < deadline, "the rotation was not followed"
        await asyncio.sleep(0.02)

    requests = await client.nats.subscribe(client.subject("jwks"))
    try:
        await client.nats.flush()
        done = await log_in(client)
        claims = await verifier.verify(done.session.access_token)
        assert claims.sub == done.user.id
        assert jwt.get_unverified_header(done.session.access_token)["kid"] == kid
        assert requests.pending_msgs == 0, "the new key was already held"
    finally:
        await requests.unsubscribe()
        await verifier.close()
