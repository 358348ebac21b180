//! The smallest complete Lanyard provider plugin, commented as a tutorial. Copy this crate,
//! rename it, and change what the comments point at. The full guide is
//! `docs/writing-a-provider.md`.
//!
//! It signs users in with "Example ID", an imaginary plain-OAuth2 service:
//!
//! - the browser goes to `{base_url}/oauth/authorize`,
//! - the daemon exchanges the code at `{base_url}/oauth/token`,
//! - the profile is `GET {base_url}/example/me` with the user's access token, answering
//!   `{"user_id": 42, "mail": "...", "mail_confirmed": true, "full_name": "..."}`.
//!
//! A plugin never does I/O. The daemon makes every HTTP request, runs state, nonce and
//! PKCE, verifies ID tokens, and keeps the client secret; the plugin only *describes* the
//! provider and *maps* its JSON to Lanyard's profile. That is what keeps plugins small,
//! safe to load, and testable without a network.

use lanyard_provider_sdk::{
    bool_field, export_provider, setting_str, str_field, ConfigField, ConfigureInput, Description,
    Endpoints, HttpRequest, MapProfileInput, Profile, ProfileRequestsInput, Protocol, Provider,
    ProviderError,
};
use serde_json::Value;

/// Step 1: a struct for the provider. It must be `Default` (the SDK creates it once) and
/// hold no state: the same plugin serves every configured instance of its kind, and each
/// call carries that instance's settings.
#[derive(Debug, Default)]
pub struct Example;

impl Provider for Example {
    /// Step 2: the kind operators write in `kind = "example"`. It must match the crate name
    /// (`lanyard-provider-example`).
    const KIND: &'static str = "example";

    /// Step 3: describe the provider. `lanyard plugin inspect` prints this, and the daemon
    /// refuses an instance whose settings are not listed in `config_fields`.
    fn describe(&self) -> Description {
        Description {
            display_name: "Example ID".into(),
            // `Oidc` makes the daemon discover endpoints from an issuer and verify an ID
            // token; `OAuth2` means the profile comes from API calls instead.
            protocol: Protocol::OAuth2,
            // Asked for when an instance configures no `scopes`.
            default_scopes: vec!["profile".into(), "email".into()],
            // Added when a login sets `fetch_groups`.
            group_scopes: Vec::new(),
            // The daemon sends a PKCE S256 challenge whenever this is true.
            pkce: true,
            config_fields: vec![ConfigField::required(
                "base_url",
                "Where Example ID lives, e.g. https://id.example.com.",
            )],
            // Fixed endpoints go here; ours depend on `base_url`, so `configure` builds them.
            endpoints: None,
            ..Description::default()
        }
    }

    /// Step 4: turn an instance's settings into endpoints. Called once when the instance
    /// starts; an error here is a configuration error naming the instance.
    fn configure(&self, input: &ConfigureInput) -> Result<Endpoints, ProviderError> {
        let base = setting_str(&input.settings, "base_url")
            .filter(|b| b.starts_with("https://") || b.starts_with("http://"))
            .ok_or_else(|| ProviderError::invalid_config("`base_url` must be an http(s) URL"))?
            .trim_end_matches('/');
        Ok(Endpoints {
            authorization_url: Some(format!("{base}/oauth/authorize")),
            token_url: Some(format!("{base}/oauth/token")),
            userinfo_url: Some(format!("{base}/example/me")),
            // How the daemon authenticates at the token URL (HTTP Basic is the default).
            ..Endpoints::default()
        })
    }

    // `authorize_params` is left out: its default passes `login_hint` and `prompt` through.
    // Override it for provider-specific parameters (Google's `access_type`, say).

    /// Step 5: which HTTP GETs the daemon should make with the user's access token after
    /// the code exchange. Each response reaches `map_profile` under its name. The daemon
    /// only sends the token to the provider's own origins.
    fn profile_requests(
        &self,
        input: &ProfileRequestsInput,
    ) -> Result<Vec<HttpRequest>, ProviderError> {
        let me = input
            .endpoints
            .userinfo_url
            .as_deref()
            .ok_or_else(|| ProviderError::invalid_config("no profile URL"))?;
        // `.optional()` would let the login go on when this request fails.
        Ok(vec![HttpRequest::get("me", me)])
    }

    /// Step 6: map the provider's JSON to the canonical profile. Be strict where it matters:
    /// the subject must be stable and never an email, and `email_verified` is true only when
    /// the provider vouches for the address (accounts get linked by verified email).
    fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
        // `response` fails with a clear error when the request failed or is missing.
        let me = input.response("me")?;
        let subject = match &me["user_id"] {
            Value::Number(n) => n.to_string(),
            Value::String(s) if !s.is_empty() => s.clone(),
            // `invalid_profile` reaches the caller as `provider_error`.
            _ => return Err(ProviderError::invalid_profile("the profile has no user_id")),
        };
        let email = str_field(me, "mail").map(str::to_owned);
        Ok(Profile {
            subject,
            email_verified: email.is_some() && bool_field(me, "mail_confirmed"),
            email,
            name: str_field(me, "full_name").map(str::to_owned),
            username: None,
            picture: None,
            groups: Vec::new(),
            // Kept for the caller, as the provider sent it.
            raw: me.clone(),
        })
    }

    // `check_claims` is left out: it matters only for OpenID Connect providers with rules
    // of their own about ID-token claims (a tenant, a hosted domain).
}

// Step 7: export it. This defines the one symbol the daemon looks up, with the ABI
// version, and catches panics at the boundary.
export_provider!(Example);

// Step 8: test it without a daemon. `Harness` calls the plugin through the same JSON the
// daemon sends across the ABI; snapshots (insta) pin the mapping.
#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_provider_sdk::testing::{Harness, Responses};
    use serde_json::json;

    #[test]
    fn maps_a_confirmed_user() {
        let input = Responses::new()
            .ok(
                "me",
                json!({"user_id": 42, "mail": "ada@example.com", "mail_confirmed": true, "full_name": "Ada"}),
            )
            .input();
        insta::assert_json_snapshot!(Harness::<Example>::new().map_profile(&input).unwrap());
    }

    #[test]
    fn an_unconfirmed_mail_is_not_verified() {
        let input = Responses::new()
            .ok("me", json!({"user_id": "7", "mail": "bob@example.com"}))
            .input();
        let profile = Harness::<Example>::new().map_profile(&input).unwrap();
        assert!(!profile.email_verified);
    }

    #[test]
    fn base_url_is_required() {
        let example = Harness::<Example>::new();
        assert!(example.configure(json!({})).is_err());
        let endpoints = example
            .configure(json!({"base_url": "https://id.example.com/"}))
            .unwrap();
        assert_eq!(
            endpoints.token_url.as_deref(),
            Some("https://id.example.com/oauth/token")
        );
    }
}
