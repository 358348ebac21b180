//! Lanyard provider plugin for Google accounts (OpenID Connect).
//!
//! - Issuer `https://accounts.google.com`; the host discovers the endpoints and verifies the
//!   ID token.
//! - `hosted_domains`: only Google Workspace users of these domains may log in (the ID
//!   token's `hd` claim, which consumer accounts lack). The `hd` authorization parameter is
//!   only a hint to Google's account chooser; the claim check is what enforces it.
//! - `offline_access = true` asks for a refresh token: `access_type=offline` and
//!   `prompt=consent` (Google sends a refresh token only on a consent screen).
//! - `email_verified` comes from the claim: Google sets it for Gmail and Workspace addresses,
//!   and for other addresses only once their owner confirmed them.

use lanyard_provider_sdk::{
    export_provider, setting_bool, setting_list, setting_str, str_field, AuthorizeInput,
    AuthorizeParams, CheckClaimsInput, ConfigField, ConfigureInput, Description, Endpoints,
    HttpRequest, MapProfileInput, Profile, ProfileRequestsInput, Protocol, Provider, ProviderError,
};

/// The Google provider.
#[derive(Debug, Default)]
pub struct Google;

const ISSUER: &str = "https://accounts.google.com";

impl Provider for Google {
    const KIND: &'static str = "google";

    fn describe(&self) -> Description {
        Description {
            display_name: "Google".into(),
            protocol: Protocol::Oidc,
            default_scopes: vec!["openid".into(), "email".into(), "profile".into()],
            pkce: true,
            config_fields: vec![
                ConfigField::optional(
                    "hosted_domains",
                    "Only Google Workspace users of these domains (the `hd` claim) may log in.",
                ),
                ConfigField::optional(
                    "offline_access",
                    "true: ask for a refresh token (access_type=offline, prompt=consent).",
                ),
                ConfigField::optional(
                    "issuer",
                    "The issuer (default https://accounts.google.com); for tests and proxies.",
                ),
            ],
            ..Description::default()
        }
    }

    fn configure(&self, input: &ConfigureInput) -> Result<Endpoints, ProviderError> {
        if let Some(value) = input.settings.get("hosted_domains") {
            let domains = setting_list(&input.settings, "hosted_domains");
            if !value.is_array() || domains.iter().any(|d| d.is_empty() || d.contains('@')) {
                return Err(ProviderError::invalid_config(
                    "`hosted_domains` is a list of domain names, e.g. [\"example.com\"]",
                ));
            }
        }
        if let Some(value) = input.settings.get("offline_access") {
            if !value.is_boolean() {
                return Err(ProviderError::invalid_config(
                    "`offline_access` is true or false",
                ));
            }
        }
        Ok(Endpoints {
            issuer: Some(
                setting_str(&input.settings, "issuer")
                    .unwrap_or(ISSUER)
                    .to_owned(),
            ),
            ..Endpoints::default()
        })
    }

    fn authorize_params(&self, input: &AuthorizeInput) -> Result<AuthorizeParams, ProviderError> {
        let mut out = AuthorizeParams::default();
        let params = &mut out.params;
        if let Some(hint) = &input.login_hint {
            params.insert("login_hint".into(), hint.clone());
        }
        if let Some(prompt) = &input.prompt {
            params.insert("prompt".into(), prompt.clone());
        }
        if setting_bool(&input.settings, "offline_access") {
            params.insert("access_type".into(), "offline".into());
            params.insert("prompt".into(), "consent".into());
        }
        if let [only] = setting_list(&input.settings, "hosted_domains").as_slice() {
            params.insert("hd".into(), only.clone());
        }
        Ok(out)
    }

    fn check_claims(&self, input: &CheckClaimsInput) -> Result<(), ProviderError> {
        let allowed = setting_list(&input.settings, "hosted_domains");
        if allowed.is_empty() {
            return Ok(());
        }
        match str_field(&input.claims, "hd") {
            Some(hd) if allowed.iter().any(|d| d.eq_ignore_ascii_case(hd)) => Ok(()),
            Some(hd) => Err(ProviderError::invalid_claims(format!(
                "hosted domain `{hd}` is not allowed"
            ))),
            None => Err(ProviderError::invalid_claims(
                "a personal Google account (no hosted domain) is not allowed",
            )),
        }
    }

    fn profile_requests(
        &self,
        input: &ProfileRequestsInput,
    ) -> Result<Vec<HttpRequest>, ProviderError> {
        // The ID token carries email and profile when their scopes were granted; otherwise
        // the userinfo endpoint may still know them.
        Ok(input
            .userinfo()
            .filter(|_| !input.has_claim("email"))
            .into_iter()
            .collect())
    }

    fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
        let oidc = input.oidc()?;
        let (email, email_verified) = oidc.email();
        Ok(Profile {
            subject: oidc.subject.to_owned(),
            email,
            email_verified,
            name: oidc.text("name"),
            username: None,
            picture: oidc.text("picture"),
            groups: Vec::new(),
            raw: oidc.claims.clone(),
        })
    }
}

export_provider!(Google);

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_provider_sdk::testing::{Harness, Responses};
    use serde_json::{json, Value};

    fn workspace_claims() -> Value {
        // Shaped after Google's documented ID token for a Workspace user.
        json!({
            "iss": "https://accounts.google.com",
            "azp": "1234987819200.apps.googleusercontent.com",
            "aud": "1234987819200.apps.googleusercontent.com",
            "sub": "10769150350006150715113082367",
            "at_hash": "HK6E_P6Dh8Y93mRNtsDB1Q",
            "hd": "example.com",
            "email": "jsmith@example.com",
            "email_verified": true,
            "iat": 1353601026,
            "exp": 1353604926,
            "nonce": "0394852-3190485-2490358",
            "name": "Jöhn Smith",
            "picture": "https://lh3.googleusercontent.com/a/photo.jpg",
            "given_name": "Jöhn",
            "family_name": "Smith",
            "locale": "de"
        })
    }

    #[test]
    fn a_workspace_user() {
        let profile = Harness::<Google>::new()
            .map_profile(&Responses::new().claims(workspace_claims()).input())
            .unwrap();
        insta::assert_json_snapshot!(profile);
    }

    #[test]
    fn an_unverified_address_and_no_name() {
        let claims = json!({
            "iss": "https://accounts.google.com",
            "sub": "110248495921238986420",
            "email": "someone@other.example",
            "email_verified": false,
        });
        let profile = Harness::<Google>::new()
            .map_profile(&Responses::new().claims(claims).input())
            .unwrap();
        insta::assert_json_snapshot!(profile);
    }

    #[test]
    fn without_the_email_scope_userinfo_fills_in_only_for_the_same_subject() {
        let claims = json!({"sub": "1"});
        let google = Harness::<Google>::new();
        let same = Responses::new().claims(claims.clone()).ok(
            "userinfo",
            json!({"sub": "1", "email": "a@gmail.com", "email_verified": true, "name": "A"}),
        );
        let profile = google.map_profile(&same.input()).unwrap();
        assert_eq!(profile.email.as_deref(), Some("a@gmail.com"));
        assert!(profile.email_verified);
        assert_eq!(profile.name.as_deref(), Some("A"));
        let other = Responses::new().claims(claims).ok(
            "userinfo",
            json!({"sub": "2", "email": "b@gmail.com", "email_verified": true}),
        );
        let profile = google.map_profile(&other.input()).unwrap();
        assert_eq!((profile.email, profile.email_verified), (None, false));
    }

    #[test]
    fn hosted_domains_are_enforced_on_the_claim() {
        let google = Harness::<Google>::new();
        let check = |claims: Value| {
            google.check_claims(&CheckClaimsInput {
                settings: lanyard_provider_sdk::testing::settings_of(
                    json!({"hosted_domains": ["example.com", "example.org"]}),
                ),
                claims,
                ..CheckClaimsInput::default()
            })
        };
        assert!(check(workspace_claims()).is_ok());
        let mut other = workspace_claims();
        other["hd"] = json!("evil.example");
        assert!(check(other).unwrap_err().message.contains("evil.example"));
        let mut personal = workspace_claims();
        personal.as_object_mut().unwrap().remove("hd");
        assert!(check(personal).unwrap_err().message.contains("personal"));
    }

    #[test]
    fn offline_access_asks_for_consent() {
        let params = Harness::<Google>::new()
            .authorize_params(&AuthorizeInput {
                settings: lanyard_provider_sdk::testing::settings_of(
                    json!({"offline_access": true, "hosted_domains": ["example.com"]}),
                ),
                login_hint: Some("jsmith@example.com".into()),
                ..AuthorizeInput::default()
            })
            .unwrap()
            .params;
        assert_eq!(params["access_type"], "offline");
        assert_eq!(params["prompt"], "consent");
        assert_eq!(params["hd"], "example.com");
        assert_eq!(params["login_hint"], "jsmith@example.com");
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let google = Harness::<Google>::new();
        assert!(google
            .configure(json!({"hosted_domains": "example.com"}))
            .is_err());
        assert!(google.configure(json!({"offline_access": "yes"})).is_err());
        assert_eq!(
            google.configure(json!({})).unwrap().issuer.as_deref(),
            Some(ISSUER)
        );
    }
}
