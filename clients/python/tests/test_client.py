"""The client against a real daemon: typed replies, refusals as exceptions carrying their
code, and a call for every command the daemon serves."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import Deployment
from flows import REDIRECT_URI, log_in, new_email, provider_redirect

import lanyard

PROTOCOL = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"


async def test_a_login_and_the_session_calls(client: lanyard.Client) -> None:
    email = new_email()
    done = await log_in(client, email, client="pytest on Linux")
    assert isinstance(done, lanyard.CallbackReply)
    assert done.new_user and done.user.email == email and done.identity.provider == "dev"
    assert done.session.token_type == "Bearer" and done.session.refresh_token.startswith("lrt_")

    claims = await client.verify(done.session.access_token)
    assert claims.sub == done.user.id and claims.iss == "lanyard"

    sessions = await client.list_sessions(done.user.id)
    assert [s.session_id for s in sessions] == [claims.sid]
    assert sessions[0].client == "pytest on Linux" and sessions[0].provider == "dev"

    refreshed = await client.refresh(done.session.refresh_token)
    assert refreshed.refresh_token != done.session.refresh_token
    assert (await client.verify(refreshed.access_token)).sid == claims.sid

    user = await client.user(done.user.id)
    assert user.email == email and [i.provider for i in user.identities] == ["dev"]

    # The provider's token, for a named caller the instance lists in token_readers.
    token = await client.token(done.user.id, "dev")
    assert token.access_token and isinstance(token.scopes, list)

    # A logout: the daemon refuses the session from then on (local verification cannot
    # see that; session.verify can).
    await client.revoke(refreshed.refresh_token)
    with pytest.raises(lanyard.Unauthorized) as refused:
        await client.verify(refreshed.access_token)
    assert refused.value.code is lanyard.ErrorCode.UNAUTHORIZED and refused.value.status == 401

    second = await log_in(client, email)
    assert not second.new_user and second.user.id == done.user.id
    second_sid = (await client.verify(second.session.access_token)).sid
    third = await log_in(client, email)
    third_sid = (await client.verify(third.session.access_token)).sid
    # "Sign out that phone": one session by its id.
    await client.revoke(user_id=done.user.id, session_id=second_sid)
    assert [s.session_id for s in await client.list_sessions(done.user.id)] == [third_sid]
    with pytest.raises(lanyard.NotFound):
        await client.revoke(user_id=done.user.id, session_id="ses_nobodys")
    # Log out everywhere: the live session ends.
    assert await client.revoke_all(done.user.id) == [third_sid]
    assert await client.list_sessions(done.user.id) == []


async def test_refusals_are_exceptions_carrying_their_code(
    deployment: Deployment, client: lanyard.Client
) -> None:
    # A callback from another browser (not the login's binding): invalid_state, 400.
    started = await client.login("dev", redirect_uri=REDIRECT_URI, login_hint=new_email())
    back = await provider_redirect(started.authorization_url)
    with pytest.raises(lanyard.InvalidState) as refused:
        await client.callback(
            query=urlsplit(back).query, binding="not-this-browsers", redirect_uri=REDIRECT_URI
        )
    assert refused.value.code is lanyard.ErrorCode.INVALID_STATE and refused.value.status == 400
    assert isinstance(refused.value, lanyard.Refused) and isinstance(refused.value, lanyard.LanyardError)

    with pytest.raises(lanyard.UnknownProvider):
        await client.login("nobody")
    with pytest.raises(lanyard.BadRequest) as bad:
        await client.login("dev", return_to="//evil.example")
    assert "return_to" in bad.value.message
    with pytest.raises(lanyard.NotFound):
        await client.device_wait("no-such-handle", timeout_secs=0)
    with pytest.raises(lanyard.NotFound):
        await client.login_wait("no-such-handle", timeout_secs=0)
    with pytest.raises(lanyard.Unauthorized):
        await client.refresh("lrt_nope")

    # Without the admin token, admin commands are refused; without a caller token, so is
    # reading a provider's tokens.
    async with await lanyard.Client.connect(deployment.nats_url) as anonymous:
        with pytest.raises(lanyard.Unauthorized):
            await anonymous.status()
        with pytest.raises(lanyard.Forbidden):
            await anonymous.token("usr_nope", "dev")

    # A daemon that is not there is a transport error, not a refusal.
    async with await lanyard.Client.connect(deployment.nats_url, prefix="nobody-serves-this") as lost:
        with pytest.raises(lanyard.TransportError):
            await lost.jwks()


async def test_a_code_newer_than_the_client_is_still_a_refusal() -> None:
    error = lanyard.errors.refused("brand_new_code", "from a newer daemon", 499)
    assert type(error) is lanyard.Refused and error.code == "brand_new_code"
    assert isinstance(lanyard.errors.refused("conflict", "x"), lanyard.Conflict)


def test_the_error_codes_are_the_protocols() -> None:
    table = PROTOCOL.read_text().split("## Errors", 1)[1].split("## Events", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \| (\d+) \|", table, re.M))
    assert {code for code, _ in documented} == {c.value for c in lanyard.ErrorCode}
    assert set(lanyard.REFUSALS) == set(lanyard.ErrorCode)


async def test_every_command_the_daemon_serves_has_a_call(client: lanyard.Client) -> None:
    info = await client.nats.request("$SRV.INFO.lanyard", b"", timeout=10)
    subjects = {e["subject"] for e in json.loads(info.data)["endpoints"]}
    assert subjects == {client.subject(c) for c in lanyard.COMMANDS}
    assert set(CALLS) == set(lanyard.COMMANDS)

    # Each call sends one request, on its command's subject (a spy on the client's own
    # connection receives the request before the call gets its reply).
    spy = await client.nats.subscribe(f"{client.prefix}.v1.>")
    try:
        await client.nats.flush()
        for command, call in CALLS.items():
            # Harmless arguments: most are refused, which still is the command.
            with contextlib.suppress(lanyard.Refused):
                await call(client)
            sent = await spy.next_msg(timeout=10)
            assert sent.subject == client.subject(command), command
            assert spy.pending_msgs == 0, f"{command} sent more than one request"
    finally:
        await spy.unsubscribe()


# Each command, sent by its method with harmless arguments.
CALLS: dict[str, Callable[[lanyard.Client], Awaitable[object]]] = {
    "login": lambda c: c.login("dev", redirect_uri=REDIRECT_URI),
    "callback": lambda c: c.callback(state="nope", code="nope", binding="nope"),
    "jwks": lambda c: c.jwks(),
    "session.verify": lambda c: c.verify("not-a-token"),
    "session.refresh": lambda c: c.refresh("lrt_nope"),
    "session.revoke": lambda c: c.revoke("lrt_nope"),
    "session.list": lambda c: c.list_sessions("usr_nope"),
    "session.revoke_all": lambda c: c.revoke_all("usr_nope"),
    "user.get": lambda c: c.user("usr_nope"),
    "token.get": lambda c: c.token("usr_nope", "dev"),
    "identity.unlink": lambda c: c.unlink("usr_nope", "dev"),
    "device.start": lambda c: c.device_start("dev"),
    "device.wait": lambda c: c.device_wait("nope", timeout_secs=0),
    "login.wait": lambda c: c.login_wait("nope", timeout_secs=0),
    "admin.keys.rotate": lambda c: c.rotate_keys(),
    "admin.provider.create": lambda c: c.provider_create({}),
    "admin.provider.update": lambda c: c.provider_update({}),
    "admin.provider.patch": lambda c: c.provider_patch("nope", {}),
    "admin.provider.delete": lambda c: c.provider_delete("nope"),
    "admin.provider.get": lambda c: c.provider_get("nope"),
    "admin.provider.list": lambda c: c.provider_list(),
    "admin.status": lambda c: c.status(),
    "admin.user.list": lambda c: c.user_list(limit=1),
    "admin.user.get": lambda c: c.admin_user("usr_nope"),
    "admin.user.disable": lambda c: c.user_disable("usr_nope"),
    "admin.user.enable": lambda c: c.user_enable("usr_nope"),
    "admin.user.delete": lambda c: c.user_delete("usr_nope"),
}


async def test_an_unreachable_nats_is_a_transport_error() -> None:
    with pytest.raises(lanyard.TransportError):
        await lanyard.Client.connect("nats://127.0.0.1:1", connect_within=1)


async def test_a_device_login(client: lanyard.Client) -> None:
    started = await client.device_start("dev", client="TV in the lobby")
    assert started.user_code and started.verification_uri_complete and started.interval >= 1
    assert (await client.device_wait(started.handle, timeout_secs=0)).pending

    # The user approves at the provider's page (the fake signs them in as its dev user).
    async with httpx.AsyncClient(timeout=30) as browser:
        assert (await browser.get(started.verification_uri_complete)).status_code == 200

    done = await asyncio.wait_for(client.wait_until_done(started.handle, timeout_secs=5), 60)
    assert done.user.email == "dev@example.test"
    sessions = await client.list_sessions(done.user.id)
    assert "TV in the lobby" in [s.client for s in sessions]
    # A wait after the end gets the same outcome again.
    again = await client.device_wait(started.handle, timeout_secs=0)
    assert again.done is not None and again.done.user.id == done.user.id


async def test_admin_calls(deployment: Deployment, client: lanyard.Client) -> None:
    status = await client.status()
    assert status.shared_changes == "following"
    assert [p.id for p in status.providers] == ["dev"]
    assert status.providers[0].status in ("ok", "degraded")  # degraded: a slow moment

    instance = {
        "id": "py-extra",
        "kind": "oidc",
        "client_id": "lanyard-dev",
        "client_secret": "dev-secret",
        "issuer": deployment.issuer,
        "redirect_uris": [REDIRECT_URI],
    }
    created = await client.provider_create(instance)
    assert created.source == "admin" and created.config["client_secret"] == "********"
    with pytest.raises(lanyard.Conflict):
        await client.provider_create(instance)
    patched = await client.provider_patch("py-extra", {"scopes": ["openid", "email"]})
    assert patched.version == created.version + 1 and patched.config["scopes"] == ["openid", "email"]
    updated = await client.provider_update({**instance, "scopes": ["openid"]})
    assert updated.config["scopes"] == ["openid"]
    assert "py-extra" in [p.config["id"] for p in await client.provider_list()]
    assert (await client.provider_get("py-extra")).version == updated.version
    await client.provider_delete("py-extra")
    with pytest.raises(lanyard.NotFound):
        await client.provider_get("py-extra")

    email = new_email()
    done = await log_in(client, email)
    page = await client.user_list(email=email)
    assert [u.id for u in page.users] == [done.user.id]
    admin_view = await client.admin_user(done.user.id)
    assert admin_view.user.identities[0].provider == "dev" and len(admin_view.sessions) == 1

    disabled = await client.user_disable(done.user.id)
    assert disabled.disabled_at is not None
    with pytest.raises(lanyard.Unauthorized):
        await client.verify(done.session.access_token)
    assert (await client.user_enable(done.user.id)).disabled_at is None

    erased = await client.user_delete(done.user.id)
    assert erased.user_id == done.user.id and erased.identities == 1 and erased.sessions_revoked == 1
    with pytest.raises(lanyard.NotFound):
        await client.user(done.user.id)


async def test_linking_and_unlinking_an_identity(deployment: Deployment, client: lanyard.Client) -> None:
    done = await log_in(client)
    with pytest.raises(lanyard.Conflict):
        await client.unlink(done.user.id, "dev")  # the last identity

    # A second instance at the same provider, and a login through it linked to the session.
    await client.provider_create(
        {
            "id": "py-second",
            "kind": "oidc",
            "client_id": "lanyard-dev",
            "client_secret": "dev-secret",
            "issuer": deployment.issuer,
            "redirect_uris": [REDIRECT_URI],
        }
    )
    try:
        started = await client.login(
            "py-second",
            redirect_uri=REDIRECT_URI,
            login_hint=done.user.email,
            link_session=done.session.access_token,
        )
        back = await provider_redirect(started.authorization_url)
        linked = await client.callback(
            query=urlsplit(back).query,
            binding=started.binding,
            provider="py-second",
            redirect_uri=REDIRECT_URI,
        )
        assert linked.user.id == done.user.id and linked.identity.provider == "py-second"
        providers = [i.provider for i in (await client.user(done.user.id)).identities]
        assert sorted(providers) == ["dev", "py-second"]

        unlinked = await client.unlink(done.user.id, "py-second")
        assert unlinked.identity.provider == "py-second" and unlinked.tokens_revoked is False
        assert [i.provider for i in (await client.user(done.user.id)).identities] == ["dev"]
    finally:
        await client.provider_delete("py-second")


async def test_user_list_pages_follow_the_cursor(client: lanyard.Client) -> None:
    for _ in range(3):
        await log_in(client)
    seen: list[str] = []
    cursor = None
    for _ in range(3):
        page = await client.user_list(cursor=cursor, limit=1)
        assert len(page.users) == 1 and page.next_cursor is not None
        seen.append(page.users[0].id)
        cursor = page.next_cursor
    assert len(set(seen)) == 3 and seen == sorted(seen)  # ids in order, no repeats
    with pytest.raises(lanyard.BadRequest):
        await client.user_list(limit=0)


async def test_events_arrive_typed(client: lanyard.Client) -> None:
    async with client.events("user.logged_in") as events:
        done = await log_in(client)
        while True:
            event = await asyncio.wait_for(events.get(), 30)
            if event.fields.get("user_id") == done.user.id:
                break
    assert event.type == "user.logged_in" and event.event_id.startswith("evt_")
    assert event.fields["provider"] == "dev" and event.fields["new_user"] is True


async def test_a_hosted_login(deployment: Deployment, client: lanyard.Client) -> None:
    started = await client.login("dev", hosted=True, login_hint=new_email())
    assert started.handle and started.authorization_url.startswith(f"{deployment.hosted_url}/login/")
    assert (await client.login_wait(started.handle, timeout_secs=0)).pending

    # The user's browser: the start page, "Continue" (a form posted to the page itself,
    # which a browser sends with its Origin), the provider, Lanyard's callback.
    async with httpx.AsyncClient(follow_redirects=True, timeout=30) as browser:
        page = await browser.get(started.authorization_url)
        assert page.status_code == 200 and '<form method="post">' in page.text
        signed_in = await browser.post(started.authorization_url, headers={"origin": deployment.hosted_url})
        assert signed_in.status_code == 200 and "You are signed in" in signed_in.text

    done = await asyncio.wait_for(client.wait_until_done(started.handle, hosted=True, timeout_secs=5), 60)
    assert done.new_user and (await client.verify(done.session.access_token)).sub == done.user.id
