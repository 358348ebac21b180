//! Running a plugin's operations without a daemon, for the plugin's own tests.
//!
//! [`Harness`] calls a [`Provider`] the way the host does across the ABI: every input is
//! encoded to JSON and decoded on the plugin's side, every output the other way, panics are
//! caught and reported, and `describe` gets its `kind` filled in. A test that passes here
//! sees what the daemon would see.
//!
//! ```
//! use lanyard_provider_sdk::testing::{Harness, Responses};
//! # use lanyard_provider_sdk::*;
//! # #[derive(Default)] struct Acme;
//! # impl Provider for Acme {
//! #     const KIND: &'static str = "acme";
//! #     fn describe(&self) -> Description { Description::default() }
//! #     fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
//! #         let me = input.response("me")?;
//! #         Ok(Profile { subject: me["id"].to_string(), ..Profile::default() })
//! #     }
//! # }
//! let acme = Harness::<Acme>::new();
//! assert_eq!(acme.describe().kind, "acme");
//! let input = Responses::new().ok("me", serde_json::json!({"id": 42})).input();
//! assert_eq!(acme.map_profile(&input).unwrap().subject, "42");
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::abi::{call_guarded, Op, Status};
use crate::{
    AuthorizeInput, AuthorizeParams, CheckClaimsInput, ConfigureInput, Description, Endpoints,
    HttpRequest, HttpResponse, MapProfileInput, Profile, ProfileRequestsInput, Provider,
    ProviderError, Settings,
};

/// Calls a provider's operations through the ABI's JSON encoding.
#[derive(Debug)]
pub struct Harness<P: Provider> {
    provider: P,
}

impl<P: Provider> Default for Harness<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Provider> Harness<P> {
    pub fn new() -> Self {
        Self {
            provider: P::default(),
        }
    }

    /// `describe`, with `kind` filled in as the host sees it.
    pub fn describe(&self) -> Description {
        self.call(Op::Describe, &Value::Object(Default::default()))
            .expect("describe cannot fail")
    }

    /// `configure` for an instance with these settings (a JSON object).
    pub fn configure(&self, settings: Value) -> Result<Endpoints, ProviderError> {
        self.call(
            Op::Configure,
            &ConfigureInput {
                id: "test".into(),
                settings: settings_of(settings),
            },
        )
    }

    pub fn authorize_params(
        &self,
        input: &AuthorizeInput,
    ) -> Result<AuthorizeParams, ProviderError> {
        self.call(Op::AuthorizeParams, input)
    }

    pub fn profile_requests(
        &self,
        input: &ProfileRequestsInput,
    ) -> Result<Vec<HttpRequest>, ProviderError> {
        self.call(Op::ProfileRequests, input)
    }

    pub fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
        self.call(Op::MapProfile, input)
    }

    pub fn check_claims(&self, input: &CheckClaimsInput) -> Result<(), ProviderError> {
        self.call::<Value>(Op::CheckClaims, input).map(|_| ())
    }

    /// One operation: the input as JSON in, the output decoded. A plugin panic, or output
    /// the host could not decode, fails the test with the reason.
    fn call<O: DeserializeOwned>(
        &self,
        op: Op,
        input: &impl Serialize,
    ) -> Result<O, ProviderError> {
        let bytes = serde_json::to_vec(input).expect("inputs encode");
        let (status, out) = call_guarded(|| &self.provider, op as u32, &bytes);
        match status {
            Status::Ok => Ok(serde_json::from_slice(&out).unwrap_or_else(|e| {
                panic!("{}: the host could not decode the output: {e}", op.name())
            })),
            Status::Error => Err(serde_json::from_slice(&out).unwrap_or_else(|e| {
                panic!("{}: the host could not decode the error: {e}", op.name())
            })),
            other => panic!(
                "{}: {other:?}: {}",
                op.name(),
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// Settings from a JSON object (anything else is no settings).
pub fn settings_of(value: Value) -> Settings {
    match value {
        Value::Object(map) => map,
        _ => Settings::new(),
    }
}

/// Builds a [`MapProfileInput`]: ID-token claims, named responses, settings.
#[derive(Debug, Clone, Default)]
pub struct Responses {
    input: MapProfileInput,
}

impl Responses {
    pub fn new() -> Self {
        Self::default()
    }

    /// The verified ID-token claims.
    pub fn claims(mut self, claims: Value) -> Self {
        self.input.claims = Some(claims);
        self
    }

    /// A response named `name` with HTTP 200.
    pub fn ok(self, name: &str, body: Value) -> Self {
        self.status(name, 200, body)
    }

    /// A response named `name` with any status (an optional request that failed).
    pub fn status(mut self, name: &str, status: u16, body: Value) -> Self {
        self.input
            .responses
            .insert(name.into(), HttpResponse { status, body });
        self
    }

    /// The instance's settings (a JSON object).
    pub fn settings(mut self, settings: Value) -> Self {
        self.input.settings = settings_of(settings);
        self
    }

    /// Whether the login asked for groups.
    pub fn fetch_groups(mut self, fetch: bool) -> Self {
        self.input.fetch_groups = fetch;
        self
    }

    pub fn input(self) -> MapProfileInput {
        self.input
    }
}
