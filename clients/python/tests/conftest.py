"""The real components the tests talk to: a nats-server, the fake identity provider (a real
OAuth2 / OpenID Connect server with signed tokens) and a Lanyard daemon on a fresh sled
directory, all started once for the session from the workspace's build
(``CLIENT_TESTS_BIN_DIR``, default ``target/debug``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

import lanyard

ROOT = Path(__file__).resolve().parents[3]
#: How long a component may take to start on a loaded machine before the tests give up.
PATIENCE = 60.0
ADMIN_TOKEN = "pytest-admin-token-0123456789"
CALLER_TOKEN = "pytest-caller-token-0123456789"


@dataclass
class Deployment:
    """What the tests reach: NATS, the provider, the daemon's probes, and its secrets."""

    nats_url: str
    issuer: str
    ops_url: str
    #: Lanyard's hosted pages.
    hosted_url: str
    admin_token: str = ADMIN_TOKEN
    caller_token: str = CALLER_TOKEN
    provider: str = "dev"


def _binary(name: str) -> str:
    target = Path(os.environ.get("CLIENT_TESTS_BIN_DIR", ROOT / "target" / "debug"))
    path = target / name
    if not path.exists():
        pytest.exit(f"{path} is missing: run `cargo build --workspace` first", returncode=2)
    return str(path)


def _nats_server() -> str:
    for candidate in (os.environ.get("NATS_SERVER"), shutil.which("nats-server"), "/usr/sbin/nats-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.exit("no nats-server: run scripts/install-deps.sh", returncode=2)


def _wait_for(what: str, check: Any, proc: subprocess.Popen[Any], log: Path) -> Any:
    """Polls ``check`` until it returns something, the process dies, or PATIENCE passes."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not start; its output:\n{log.read_text(errors='replace')[-4000:]}")


def _start(args: list[str], log: Path, **kw: Any) -> tuple[subprocess.Popen[Any], IO[Any]]:
    out = log.open("wb")
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **kw), out


@pytest.fixture(scope="session")
def deployment() -> Iterator[Deployment]:
    with tempfile.TemporaryDirectory(prefix="lanyard-pytest-") as tmp:
        dir = Path(tmp)
        procs: list[tuple[subprocess.Popen[Any], IO[Any]]] = []
        try:
            yield _deploy(dir, procs)
        finally:
            for proc, out in reversed(procs):
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                out.close()


def _deploy(dir: Path, procs: list[tuple[subprocess.Popen[Any], IO[Any]]]) -> Deployment:
    # nats-server picks a free port and writes it to a ports file: no race for a port.
    nats_log = dir / "nats.log"
    procs.append(
        _start([_nats_server(), "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", str(dir)], nats_log)
    )
    nats_proc = procs[-1][0]

    def nats_url() -> str | None:
        ports = dir / f"nats-server_{nats_proc.pid}.ports"
        try:
            return str(json.loads(ports.read_text())["nats"][0])
        except (OSError, ValueError, KeyError, IndexError):
            return None

    url = _wait_for("nats-server", nats_url, nats_proc, nats_log)

    idp_log = dir / "idp.log"
    procs.append(_start([_binary("lanyard-fake-idp"), "--listen", "127.0.0.1:0"], idp_log))
    issuer = _wait_for(
        "lanyard-fake-idp", lambda: _grep(idp_log, r"issuer (http://\S+)"), procs[-1][0], idp_log
    )

    # The hosted pages' address must be in the config before the daemon binds it: a port
    # free a moment ago (as the Rust suite's hosted tests pick theirs).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        hosted = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = dir / "lanyard.toml"
    config.write_text(
        CONFIG.format(
            data=dir / "data",
            nats=url,
            issuer=issuer,
            hosted=hosted,
            hosted_addr=hosted.removeprefix("http://"),
        )
    )
    daemon_log = dir / "lanyard.log"
    # The daemon reads LANYARD_* as configuration: none of the caller's leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANYARD_")}
    env.update(LANYARD_LOG="info", NO_COLOR="1")
    procs.append(_start([_binary("lanyard"), "serve", "--config", str(config)], daemon_log, env=env))
    daemon = procs[-1][0]
    ops = _wait_for("lanyard", lambda: _grep(daemon_log, r"ops listener.*?addr=(\S+)"), daemon, daemon_log)
    ops_url = f"http://{ops}"
    _wait_for("lanyard's readiness", lambda: _ready(ops_url), daemon, daemon_log)
    return Deployment(nats_url=url, issuer=issuer, ops_url=ops_url, hosted_url=hosted)


def _grep(log: Path, pattern: str) -> str | None:
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))
    match = re.search(pattern, text)
    return match.group(1) if match else None


def _ready(ops_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{ops_url}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


CONFIG = """
data_dir = "{data}"

[nats]
url = "{nats}"

[ops]
listen = "127.0.0.1:0"

[hosted]
listen = "{hosted_addr}"
public_url = "{hosted}"

[admin]
token = "{ADMIN_TOKEN}"

[[callers]]
name = "pytests"
token = "{CALLER_TOKEN}"

[[providers]]
id = "dev"
kind = "oidc"
client_id = "lanyard-dev"
client_secret = "dev-secret"
issuer = "{issuer}"
# Loopback: any port (RFC 8252), so the FastAPI example's server may take any free one.
redirect_uris = ["http://127.0.0.1/auth/callback/dev", "{hosted}/callback"]
device_flow = true
hosted_logins = true
store_tokens = true
token_readers = ["pytests"]
""".replace("{ADMIN_TOKEN}", ADMIN_TOKEN).replace("{CALLER_TOKEN}", CALLER_TOKEN)


@pytest.fixture
async def client(deployment: Deployment) -> AsyncIterator[lanyard.Client]:
    """A client as a service holding a caller token would have it."""
    async with await lanyard.Client.connect(
        deployment.nats_url, admin_token=deployment.admin_token, caller_token=deployment.caller_token
    ) as client:
        yield client
