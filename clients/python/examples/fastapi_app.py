"""A FastAPI app whose OAuth routes are Lanyard's: what replaces the login route, the
callback route and the "who is this" dependency of a typical FastAPI app.

- ``GET /login/{provider}`` starts a login and sends the browser to the provider, with
  the login's ``binding`` in an HttpOnly cookie of that browser (so a callback link opened
  in another browser is refused: no login CSRF).
- ``GET /auth/callback/{provider}`` finishes it: the user, and a Lanyard session kept in
  two HttpOnly cookies (the short-lived access token and the refresh token).
- ``current_user`` is the dependency routes take: the access token verified locally
  against the daemons' keys (no request), refreshed through Lanyard when it expired.
- ``POST /logout`` ends the session everywhere it is used.

Run it against ``make run`` (the dev provider registers this app's callback):

    pip install lanyard[fastapi] uvicorn
    python examples/fastapi_app.py        # then open http://localhost:3000/login/dev

In production, serve it over https (``APP_PUBLIC_URL=https://…``): the cookies are then
``Secure`` with the ``__Host-`` prefix, which keeps sibling subdomains from planting them.
"""

import html
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

import lanyard

#: How long the refresh-token cookie lasts; the session itself ends when Lanyard says so.
REFRESH_COOKIE_SECS = 30 * 24 * 3600


@dataclass(frozen=True)
class Settings:
    nats_url: str = "nats://127.0.0.1:4222"
    #: Where browsers reach this app; the callback is ``{public_url}/auth/callback/{id}``,
    #: which the provider instance's ``redirect_uris`` must list.
    public_url: str = "http://localhost:3000"
    #: The daemons' ``[sessions] issuer`` and ``audience``.
    issuer: str = "lanyard"
    audience: str = "lanyard"
    #: This service's token from ``[[callers]]``, if it has one.
    caller_token: str | None = None

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            nats_url=os.environ.get("LANYARD_NATS_URL", cls.nats_url),
            public_url=os.environ.get("APP_PUBLIC_URL", cls.public_url).rstrip("/"),
            issuer=os.environ.get("LANYARD_ISSUER", cls.issuer),
            audience=os.environ.get("LANYARD_AUDIENCE", cls.audience),
            caller_token=os.environ.get("LANYARD_CALLER_TOKEN"),
        )


class Cookies:
    """The cookies' names and attributes: ``__Host-`` and ``Secure`` on https."""

    def __init__(self, public_url: str) -> None:
        self.secure = public_url.startswith("https://")
        prefix = "__Host-" if self.secure else ""
        self.binding = f"{prefix}lanyard_binding"
        self.access = f"{prefix}session"
        self.refresh = f"{prefix}refresh"

    def set(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name, value, max_age=max_age, path="/", secure=self.secure, httponly=True, samesite="lax"
        )

    def set_session(self, response: Response, session: lanyard.Session) -> None:
        self.set(response, self.access, session.access_token, session.expires_in)
        self.set(response, self.refresh, session.refresh_token, REFRESH_COOKIE_SECS)

    def clear(self, response: Response, *names: str) -> None:
        for name in names:
            response.delete_cookie(name, path="/", secure=self.secure, httponly=True, samesite="lax")


def lanyard_client(request: Request) -> lanyard.Client:
    """The app's Lanyard client (one connection for the process)."""
    client: lanyard.Client = request.app.state.lanyard
    return client


Lanyard = Annotated[lanyard.Client, Depends(lanyard_client)]


async def current_user(request: Request, response: Response, client: Lanyard) -> lanyard.Claims:
    """The signed-in user's claims, or 401. The access token is verified locally, which
    cannot see a logout elsewhere until it expires (minutes); for a sensitive action, ask
    Lanyard instead: ``await client.verify(token)``."""
    verifier: lanyard.Verifier = request.app.state.verifier
    cookies: Cookies = request.app.state.cookies
    token = _bearer(request) or request.cookies.get(cookies.access)
    if token:
        try:
            return await verifier.verify(token)
        except lanyard.InvalidToken:
            pass  # expired, most likely: refresh below
    refresh_token = request.cookies.get(cookies.refresh)
    if refresh_token:
        try:
            session = await client.refresh(refresh_token)
        except lanyard.Unauthorized:
            pass  # logged out, revoked, or the session ended
        else:
            cookies.set_session(response, session)
            return await verifier.verify(session.access_token)
    raise HTTPException(401, "sign in first", headers={"WWW-Authenticate": "Bearer"})


#: What a route takes to require a signed-in user: ``async def page(user: User)``.
User = Annotated[lanyard.Claims, Depends(current_user)]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    cookies = Cookies(settings.public_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = await lanyard.Client.connect(settings.nats_url, caller_token=settings.caller_token)
        verifier = client.verifier(settings.issuer, settings.audience)
        await verifier.follow_rotations()
        app.state.lanyard, app.state.verifier, app.state.cookies = client, verifier, cookies
        yield
        await verifier.close()
        await client.close()

    app = FastAPI(lifespan=lifespan)

    def callback_url(provider: str) -> str:
        return f"{settings.public_url}/auth/callback/{provider}"

    @app.get("/login/{provider}")
    async def login(
        provider: str, client: Lanyard, next: str = "/", login_hint: str | None = None
    ) -> Response:
        try:
            started = await client.login(
                provider, redirect_uri=callback_url(provider), return_to=next, login_hint=login_hint
            )
        except (lanyard.BadRequest, lanyard.UnknownProvider) as e:
            raise HTTPException(400 if isinstance(e, lanyard.BadRequest) else 404, str(e.code)) from e
        response = RedirectResponse(started.authorization_url, status_code=303)
        # A second login in this browser replaces the cookie: only its latest login finishes.
        cookies.set(response, cookies.binding, started.binding, max_age=30 * 60)
        return response

    @app.get("/auth/callback/{provider}")
    async def callback(provider: str, request: Request, client: Lanyard) -> Response:
        agent = "".join(c for c in request.headers.get("user-agent", "") if c.isprintable())[:64]
        try:
            done = await client.callback(
                query=request.url.query,
                provider=provider,
                redirect_uri=callback_url(provider),
                binding=request.cookies.get(cookies.binding),
                client=agent or None,
            )
        except lanyard.Refused as e:
            # The code says what happened (invalid_state: used, expired, or started in
            # another browser; access_denied: the user said no); never show the message's
            # details to the user, they are for the logs.
            status = 403 if e.code == lanyard.ErrorCode.ACCESS_DENIED else 400
            page = HTMLResponse(_FAILED.format(code=html.escape(str(e.code))), status)
            cookies.clear(page, cookies.binding)
            return page
        response = RedirectResponse(done.return_to or "/", status_code=303)
        cookies.set_session(response, done.session)
        cookies.clear(response, cookies.binding)
        return response

    @app.get("/me")
    async def me(user: User) -> dict[str, Any]:
        return {"user_id": user.sub, "session_id": user.sid, "email": user.email}

    @app.post("/logout")
    async def logout(request: Request, client: Lanyard) -> Response:
        refresh_token = request.cookies.get(cookies.refresh)
        if refresh_token:
            await client.revoke(refresh_token)
        response = RedirectResponse("/", status_code=303)
        cookies.clear(response, cookies.access, cookies.refresh)
        return response

    return app


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


_FAILED = """<!doctype html><title>Sign-in failed</title>
<p>Sign-in did not finish ({code}). <a href="/">Start again</a>.</p>"""


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=3000)
