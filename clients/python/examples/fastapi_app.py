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

    make demo-fastapi       # or: pip install './clients/python[fastapi]' uvicorn
                            #     python clients/python/examples/fastapi_app.py
    # then open http://localhost:3000/login/dev

In production, serve it over https (``APP_PUBLIC_URL=https://…``): the cookies are then
``Secure`` with the ``__Host-`` prefix, which keeps sibling subdomains from planting them.
"""

import html
import ipaddress
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

import lanyard

#: How long the refresh-token cookie lasts; the session itself ends when Lanyard says so.
REFRESH_COOKIE_SECS = 30 * 24 * 3600


@dataclass(frozen=True)
class Settings:
    nats_url: str = "nats://127.0.0.1:4222"
    #: Where browsers reach this app; the callback is ``{public_url}/auth/callback/{id}``,
    #: which the provider instance's ``redirect_uris`` must list. https, or loopback http
    #: for development.
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
    """The cookies' names and attributes: ``__Host-`` and ``Secure`` on https.

    Plain http is refused but for loopback (development): without ``__Host-``, a sibling
    subdomain could plant its own binding cookie in a user's browser (login CSRF)."""

    def __init__(self, public_url: str) -> None:
        url = urlsplit(public_url)
        self.origin = f"{url.scheme}://{url.netloc}".lower()
        self.secure = url.scheme.lower() == "https"
        if not self.secure and not _loopback(url.hostname or ""):
            raise ValueError(f"public_url {public_url} must be https (or loopback http, for development)")
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


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def lanyard_client(request: Request) -> lanyard.Client:
    """The app's Lanyard client (one connection for the process)."""
    client: lanyard.Client = request.app.state.lanyard
    return client


Lanyard = Annotated[lanyard.Client, Depends(lanyard_client)]


async def current_user(request: Request, client: Lanyard) -> lanyard.Claims:
    """The signed-in user's claims, or 401. The access token is verified locally, which
    cannot see a logout elsewhere until it expires (minutes); for a sensitive action, ask
    Lanyard instead: ``await client.verify(token)``.

    When the access token expired, the refresh token gets a new session, whose cookies the
    middleware in :func:`create_app` sets on whatever the route answers (a refresh token is
    used up: a browser that does not get its successor would present it again, and a
    second use after a few seconds revokes the session as stolen)."""
    verifier: lanyard.Verifier = request.app.state.verifier
    cookies: Cookies = request.app.state.cookies
    token = _bearer(request) or request.cookies.get(cookies.access)
    try:
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
                request.state.refreshed_session = session
                return await verifier.verify(session.access_token)
    except lanyard.InvalidToken:
        pass
    except lanyard.LanyardError as e:  # Lanyard unreachable, or refusing for now
        raise HTTPException(503, "sign-in is unavailable; try again shortly") from e
    raise HTTPException(401, "sign in first", headers={"WWW-Authenticate": "Bearer"})


#: What a route takes to require a signed-in user: ``async def page(user: User)``.
User = Annotated[lanyard.Claims, Depends(current_user)]


async def optional_user(request: Request, client: Lanyard) -> lanyard.Claims | None:
    """The signed-in user's claims, or ``None`` for a visitor."""
    try:
        return await current_user(request, client)
    except HTTPException as e:
        if e.status_code == 401:
            return None
        raise


OptionalUser = Annotated[lanyard.Claims | None, Depends(optional_user)]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    cookies = Cookies(settings.public_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = await lanyard.Client.connect(settings.nats_url, caller_token=settings.caller_token)
        verifier = client.verifier(settings.issuer, settings.audience)
        try:
            await verifier.follow_rotations()
            app.state.lanyard, app.state.verifier, app.state.cookies = client, verifier, cookies
            yield
        finally:
            await verifier.close()
            await client.close()

    app = FastAPI(lifespan=lifespan)

    @app.middleware("http")
    async def refreshed_session_cookies(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        session = getattr(request.state, "refreshed_session", None)
        if session is not None:
            cookies.set_session(response, session)
        return response

    def callback_url(provider: str) -> str:
        return f"{settings.public_url}/auth/callback/{provider}"

    @app.get("/login/{provider}")
    async def login(
        provider: str, client: Lanyard, next: str = "/", login_hint: str | None = None
    ) -> Response:
        # Lanyard checks `next` (a relative path, or under allowed_return_to) and seals it
        # in the state: no open redirect.
        try:
            started = await client.login(
                provider, redirect_uri=callback_url(provider), return_to=next, login_hint=login_hint
            )
        except (lanyard.BadRequest, lanyard.UnknownProvider) as e:
            raise HTTPException(400 if isinstance(e, lanyard.BadRequest) else 404, str(e.code)) from e
        response = RedirectResponse(started.authorization_url, status_code=303)
        # A second login in this browser replaces the cookie: only its latest login finishes.
        expires = datetime.fromisoformat(started.expires_at.replace("Z", "+00:00"))
        lasts = int((expires - datetime.now(UTC)).total_seconds())
        cookies.set(response, cookies.binding, started.binding, max_age=max(lasts, 60))
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
            # another browser; access_denied: the user said no); the message is for the
            # logs. The binding cookie stays: a forged callback link must not end the
            # login this browser has under way.
            status = 403 if e.code == lanyard.ErrorCode.ACCESS_DENIED else 400
            page = _FAILED.format(code=html.escape(str(e.code)), provider=html.escape(provider))
            return HTMLResponse(page, status)
        response = RedirectResponse(done.return_to or "/", status_code=303)
        cookies.set_session(response, done.session)
        cookies.clear(response, cookies.binding)
        return response

    @app.get("/")
    async def home(user: OptionalUser) -> HTMLResponse:
        if user is None:
            return HTMLResponse('<!doctype html><p><a href="/login/dev">Sign in</a></p>')
        return HTMLResponse(f"<!doctype html><p>Signed in as {html.escape(user.sub)}.</p>")

    @app.get("/me")
    async def me(user: User) -> dict[str, Any]:
        return {"user_id": user.sub, "session_id": user.sid, "email": user.email}

    @app.post("/logout")
    async def logout(request: Request, client: Lanyard) -> Response:
        # SameSite=Lax keeps other sites' posts from carrying the cookies; the Origin check
        # keeps out this site's neighbours too.
        if request.headers.get("origin", cookies.origin).lower() != cookies.origin:
            raise HTTPException(403, "logout only from this site")
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
<p>Sign-in did not finish ({code}). <a href="/login/{provider}">Start again</a>.</p>"""


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=3000)
