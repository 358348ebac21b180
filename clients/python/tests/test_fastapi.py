"""The FastAPI example, served by uvicorn on a real socket, driven by an HTTP client that
keeps cookies as a browser does, through the fake provider and a real daemon."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
import uvicorn
from conftest import Deployment
from fastapi import Response
from flows import new_email

import lanyard

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fastapi_app.py"


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastapi_app"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def app_url(deployment: Deployment) -> AsyncIterator[str]:
    """The example app on a socket of its own, configured for the test deployment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app_module = example()
        settings = app_module.Settings(nats_url=deployment.nats_url, public_url=url)
        config = uvicorn.Config(app_module.create_app(settings), log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        deadline = asyncio.get_running_loop().time() + 60
        while not server.started:
            assert not serving.done(), "the example app did not start"
            assert asyncio.get_running_loop().time() < deadline, "the example app did not start"
            await asyncio.sleep(0.01)
        yield url
        server.should_exit = True
        await asyncio.wait_for(serving, 30)


def browser() -> httpx.AsyncClient:
    return httpx.AsyncClient(follow_redirects=True, timeout=30, headers={"user-agent": "pytest-browser/1.0"})


async def test_a_login_through_the_example(app_url: str, client: lanyard.Client) -> None:
    email = new_email()
    async with browser() as alice:
        assert (await alice.get(f"{app_url}/me")).status_code == 401

        me = await alice.get(f"{app_url}/login/dev", params={"next": "/me", "login_hint": email})
        assert me.status_code == 200, me.text
        assert me.json()["email"] is None  # no user claims unless [sessions.claims] asks
        user_id = me.json()["user_id"]
        assert (await client.user(user_id)).email == email

        # The hops: the app's login (binding cookie), the provider, the app's callback
        # (session cookies, binding cleared), then /me.
        login, _provider, callback = me.history
        assert "lanyard_binding=" in login.headers["set-cookie"]
        assert "httponly" in login.headers["set-cookie"].lower()
        set_cookies = callback.headers.get_list("set-cookie")
        assert any(c.startswith("session=") and "HttpOnly" in c for c in set_cookies)
        assert any(c.startswith('lanyard_binding=""') or "Max-Age=0" in c for c in set_cookies)
        sessions = await client.list_sessions(user_id)
        assert [s.client for s in sessions] == ["pytest-browser/1.0"]

        # An access token that does not verify (expired, say): current_user refreshes the
        # session through Lanyard, and the new cookies go out with whatever the route
        # answers: data (/me), or a response of its own (/ answers HTML).
        for page in ("/me", "/"):
            used = alice.cookies.get("refresh")
            alice.cookies.set("session", "expired.or.garbage", domain="127.0.0.1")
            again = await alice.get(f"{app_url}{page}")
            assert again.status_code == 200 and user_id in again.text, page
            set_cookies = again.headers.get_list("set-cookie")
            assert any(c.startswith("session=") for c in set_cookies), page
            assert any(c.startswith("refresh=") for c in set_cookies), page
            assert alice.cookies.get("refresh") != used, page
        # The browser holds the newest refresh token: it still works after the grace in
        # which the used one would be answered again.
        assert (await alice.get(f"{app_url}/me")).status_code == 200

        # Logout ends the session at Lanyard: the refresh token no longer works anywhere.
        # Only from the app's own pages (a neighbour's form post is refused).
        refresh_token = alice.cookies.get("refresh")
        assert refresh_token is not None
        forged = await alice.post(f"{app_url}/logout", headers={"origin": "http://evil.example"})
        assert forged.status_code == 403
        await alice.post(f"{app_url}/logout", headers={"origin": app_url})
        assert (await alice.get(f"{app_url}/me")).status_code == 401
        with pytest.raises(lanyard.Unauthorized):
            await client.refresh(refresh_token)


async def test_a_callback_opened_in_another_browser_is_refused(app_url: str) -> None:
    async with browser() as victim, httpx.AsyncClient(timeout=30) as attacker:
        # The attacker starts a login and signs in at the provider, but does not follow
        # the way back: the callback link is what they would send the victim.
        login = await attacker.get(f"{app_url}/login/dev", params={"login_hint": new_email()})
        assert login.status_code == 303
        back = await attacker.get(login.headers["location"])
        callback_link = back.headers["location"]
        assert callback_link.startswith(f"{app_url}/auth/callback/dev?")

        refused = await victim.get(callback_link)
        assert refused.status_code == 400 and "invalid_state" in refused.text
        assert (await victim.get(f"{app_url}/me")).status_code == 401
        assert not victim.cookies.get("session")


async def test_a_return_to_off_site_is_refused(app_url: str) -> None:
    async with browser() as alice:
        response = await alice.get(f"{app_url}/login/dev", params={"next": "//evil.example/"})
        assert response.status_code == 400 and "bad_request" in response.text


def test_cookies_are_host_only_and_secure_on_https() -> None:
    cookies = example().Cookies("HTTPS://app.example.com")
    assert cookies.secure and cookies.binding == "__Host-lanyard_binding"
    response = Response()
    cookies.set(response, cookies.binding, "b", max_age=60)
    header = response.headers["set-cookie"]
    for attribute in ("Secure", "HttpOnly", "Path=/", "SameSite=lax", "Max-Age=60"):
        assert attribute in header
    assert "Domain" not in header


def test_plain_http_is_refused_but_on_loopback() -> None:
    module = example()
    for dev in ("http://localhost:3000", "http://127.0.0.1:3000", "http://[::1]:3000"):
        assert not module.Cookies(dev).secure
    with pytest.raises(ValueError, match="https"):
        module.Cookies("http://app.example.com")
