"""What a user's browser does in the tests: follows the authorization URL to the fake
provider, which signs in at once and redirects back with the code."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

import httpx

import lanyard

#: The redirect URI the tests' logins use (the instance allows any loopback port).
REDIRECT_URI = "http://127.0.0.1:8123/auth/callback/dev"


def new_email() -> str:
    """A user nobody else in the session logs in as."""
    return f"py-{secrets.token_hex(6)}@example.test"


async def provider_redirect(authorization_url: str) -> str:
    """Where the provider sends the browser back to: the callback URL, with its query."""
    async with httpx.AsyncClient(follow_redirects=False, timeout=30) as browser:
        response = await browser.get(authorization_url)
    assert response.status_code in (302, 303), response.text
    return response.headers["location"]


async def log_in(service: lanyard.Client, email: str | None = None, **callback: str) -> lanyard.CallbackReply:
    """A whole login through the client, as a service's routes make it."""
    started = await service.login("dev", redirect_uri=REDIRECT_URI, login_hint=email or new_email())
    back = await provider_redirect(started.authorization_url)
    return await service.callback(
        query=urlsplit(back).query,
        binding=started.binding,
        provider="dev",
        redirect_uri=REDIRECT_URI,
        **callback,
    )
