"""The client against a real daemon: typed replies, refusals as exceptions carrying their
code, and a call for every command the daemon serves."""

from __future__ import annotations

import asyncio
import json
import re
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
    # Log out everywhere: the live session ends (the first one ended at its logout).
    assert await client.revoke_all(done.user.id) == [second_sid]
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
    for command in lanyard.COMMANDS:
        assert hasattr(lanyard.Client, CALLS[command]), command


# Which method sends each command.
CALLS = {
    "login": "login",
    "callback": "callback",
    "jwks": "jwks",
    "session.verify": "verify",
    "session.refresh": "refresh",
    "session.revoke": "revoke",
    "session.list": "list_sessions",
    "session.revoke_all": "revoke_all",
    "user.get": "user",
    "token.get": "token",
    "identity.unlink": "unlink",
    "device.start": "device_start",
    "device.wait": "device_wait",
    "login.wait": "login_wait",
    "admin.keys.rotate": "rotate_keys",
    "admin.provider.create": "provider_create",
    "admin.provider.update": "provider_update",
    "admin.provider.patch": "provider_patch",
    "admin.provider.delete": "provider_delete",
    "admin.provider.get": "provider_get",
    "admin.provider.list": "provider_list",
    "admin.status": "status",
    "admin.user.list": "user_list",
    "admin.user.get": "admin_user",
    "admin.user.disable": "user_disable",
    "admin.user.enable": "user_enable",
    "admin.user.delete": "user_delete",
}


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
    assert [(p.id, p.status) for p in status.providers] == [("dev", "ok")]

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


async def test_unlinking_the_last_identity_is_a_conflict(client: lanyard.Client) -> None:
    done = await log_in(client)
    with pytest.raises(lanyard.Conflict):
        await client.unlink(done.user.id, "dev")


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
