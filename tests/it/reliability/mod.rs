//! Faults survived: stopping, overload, faults of plugins and providers, hostile input.
//! (RELIABILITY.md lists what each test proves.)

mod hostile_input;
mod overload;
mod provider_faults;
mod shutdown;

/// The `oidc` instance's `allowed_algs` line, and the same with an HTTP timeout (two minutes)
/// that no request held at the provider while a test looks reaches.
pub(super) const PATIENT_ALGS: (&str, &str) = (
    "allowed_algs = [\"RS256\", \"ES256\"]",
    "allowed_algs = [\"RS256\", \"ES256\"]\nhttp_timeout_ms = 120000",
);
