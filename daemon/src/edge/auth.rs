//! Who may run a command: named callers by their token (SHA-256, compared in constant time against every caller) and the admin token.

use async_nats::HeaderMap;

use lanyard_proto::{ADMIN_TOKEN_HEADER, CALLER_TOKEN_HEADER};

use crate::error::{Error, ErrorCode};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use super::dispatch::Context;

/// A named caller: the SHA-256 of its token, and its rate limit.
pub(super) struct Caller {
    pub(super) name: String,
    pub(super) hash: [u8; 32],
    pub(super) limiter: Option<governor::DefaultDirectRateLimiter>,
}

impl Caller {
    /// A caller known by `token` (only its SHA-256 is kept), limited to `rate` a second.
    pub(super) fn new(
        name: String,
        token: &secrecy::SecretString,
        rate: Option<std::num::NonZeroU32>,
    ) -> Self {
        Self {
            name,
            hash: crate::crypto::token_hash(secrecy::ExposeSecret::expose_secret(token)),
            limiter: rate.map(|r| governor::RateLimiter::direct(governor::Quota::per_second(r))),
        }
    }
}

impl Context {
    /// The caller a request authenticates as: none without the header; `unauthorized` for a
    /// token no caller has. Tokens are compared as hashes, in constant time, against every
    /// caller, so timing tells nothing about which one nearly matched.
    pub(super) fn caller(&self, headers: Option<&HeaderMap>) -> Result<Option<&str>, Error> {
        let Some(given) = headers.and_then(|h| h.get(CALLER_TOKEN_HEADER)) else {
            return Ok(None);
        };
        let found = crate::crypto::find_by_token(&self.callers, |c| &c.hash, given.as_str());
        let caller = found.ok_or_else(|| {
            Error::new(
                ErrorCode::Unauthorized,
                format!("{CALLER_TOKEN_HEADER} names no configured caller"),
            )
        })?;
        if let Some(limiter) = &caller.limiter {
            limiter.check().map_err(|_| {
                Error::new(
                    ErrorCode::RateLimited,
                    format!(
                        "caller `{}` is over its rate limit; retry shortly",
                        caller.name
                    ),
                )
            })?;
        }
        Ok(Some(caller.name.as_str()))
    }
}

/// Checks the admin token, when one is configured, in constant time.
pub(super) fn authorize_admin(
    expected: &Option<SecretString>,
    headers: Option<&HeaderMap>,
) -> Result<(), Error> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let given = headers
        .and_then(|h| h.get(ADMIN_TOKEN_HEADER))
        .map(|v| v.as_str())
        .unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::Unauthorized,
            format!("admin commands need a valid {ADMIN_TOKEN_HEADER} header"),
        ))
    }
}
