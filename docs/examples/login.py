# A whole Lanyard login from Python (pip install nats-py), against `make run`.
# Any language with a NATS client does the same two requests.
import asyncio, json, urllib.parse, urllib.request
import nats

class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None

async def main():
    nc = await nats.connect("nats://127.0.0.1:4222")
    # 1. Your service asks Lanyard where to send the user.
    msg = await nc.request("lanyard.v1.login",
                           json.dumps({"provider": "dev", "return_to": "/home"}).encode(), timeout=5)
    login = json.loads(msg.data)
    print("send the browser to:", login["authorization_url"][:60], "...")
    # Keep the login's binding in this browser: your redirect to the provider sets
    #   Set-Cookie: __Host-lanyard_binding=<binding>; HttpOnly; Secure; SameSite=Lax; Path=/
    cookies = {"__Host-lanyard_binding": login["binding"]}  # (here we play the browser's cookie jar)

    # 2. The browser logs in at the provider, which redirects to your callback URL.
    #    (Here we play the browser against the dev provider, which approves at once.)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(login["authorization_url"])
    except urllib.error.HTTPError as redirect:
        callback_url = redirect.headers["Location"]
    query = urllib.parse.urlsplit(callback_url).query

    # 3. Your callback handler hands the query string to Lanyard, with the binding from the
    #    browser's cookie: a callback link planted in another browser (login CSRF) has none.
    callback = {"query": query, "binding": cookies.get("__Host-lanyard_binding")}
    msg = await nc.request("lanyard.v1.callback", json.dumps(callback).encode(), timeout=10)
    reply = json.loads(msg.data)
    if "error" in reply:
        print("login failed:", reply["error"]["code"], reply["error"]["message"])
    else:
        print("logged in:", reply["user"]["id"], reply["user"]["email"], "new:", reply["new_user"])
        print("session token:", reply["session"]["access_token"][:24], "...")
    await nc.close()

asyncio.run(main())
