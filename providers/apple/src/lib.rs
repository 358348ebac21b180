//! Lanyard provider plugin for Sign in with Apple (OpenID Connect, issuer
//! `https://appleid.apple.com`).
//!
//! Apple's quirks, and how Lanyard meets them:
//!
//! - **The client secret is a JWT.** Apple wants an ES256 JWT signed with a private key from
//!   the developer account (`iss` = team id, `kid` = key id, `sub` = the Services ID,
//!   `aud` = `https://appleid.apple.com`). Configure the key (the `.p8` file's PEM) as the
//!   instance's client secret, preferably with `client_secret_file`, plus `team_id` and
//!   `key_id`; the daemon signs a fresh JWT itself and never hands the key to the plugin.
//! - **`response_mode=form_post`.** When name or email is asked for, Apple POSTs the result
//!   to the redirect URI as a form instead of a query string. Pass that form body to
//!   `lanyard.v1.callback` as `query`: it has the same encoding.
//! - **The name arrives once.** Only on the user's first authorization does the form carry
//!   `user={"name":{"firstName":…,"lastName":…},…}`; the ID token never has a name. The name is
//!   taken from there (it is unauthenticated, so only the name is used, never its email).
//! - **Email.** The ID token's `email` (maybe a private relay address,
//!   `…@privaterelay.appleid.com`) with `email_verified`, which Apple sends as a string.

use lanyard_provider_sdk::{
    bool_field, export_provider, setting_str, str_field, AuthorizeInput, AuthorizeParams,
    ClientSecretJwt, ConfigField, ConfigureInput, Description, Endpoints, MapProfileInput, Profile,
    Protocol, Provider, ProviderError, TokenAuth,
};
use serde_json::Value;

/// The Apple provider.
#[derive(Debug, Default)]
pub struct Apple;

const ISSUER: &str = "https://appleid.apple.com";
/// Apple accepts client-secret JWTs for up to six months; a day is plenty.
const SECRET_LIFETIME_SECS: u64 = 86_400;

impl Provider for Apple {
    const KIND: &'static str = "apple";

    fn describe(&self) -> Description {
        Description {
            display_name: "Apple".into(),
            protocol: Protocol::Oidc,
            default_scopes: vec!["openid".into(), "name".into(), "email".into()],
            pkce: true,
            config_fields: vec![
                ConfigField::required("team_id", "The Apple developer team id (10 characters)."),
                ConfigField::required(
                    "key_id",
                    "The id of the Sign in with Apple private key; the key itself is the client secret.",
                ),
                ConfigField::optional(
                    "issuer",
                    "The issuer (default https://appleid.apple.com); for tests.",
                ),
            ],
            ..Description::default()
        }
    }

    fn configure(&self, input: &ConfigureInput) -> Result<Endpoints, ProviderError> {
        let id = |name: &str| {
            setting_str(&input.settings, name)
                .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric()))
                .map(str::to_owned)
                .ok_or_else(|| {
                    ProviderError::invalid_config(format!(
                        "`{name}` is required: letters and digits, as the Apple developer account shows it"
                    ))
                })
        };
        let issuer = setting_str(&input.settings, "issuer").unwrap_or(ISSUER);
        Ok(Endpoints {
            issuer: Some(issuer.to_owned()),
            token_auth: TokenAuth::ClientSecretPost,
            client_secret_jwt: Some(ClientSecretJwt {
                issuer: id("team_id")?,
                key_id: id("key_id")?,
                audience: ISSUER.to_owned(),
                lifetime_secs: SECRET_LIFETIME_SECS,
            }),
            ..Endpoints::default()
        })
    }

    fn authorize_params(&self, input: &AuthorizeInput) -> Result<AuthorizeParams, ProviderError> {
        let mut out = AuthorizeParams::default();
        // Apple requires form_post whenever name or email is requested.
        if input.scopes.iter().any(|s| s == "name" || s == "email") {
            out.params
                .insert("response_mode".into(), "form_post".into());
        }
        Ok(out)
    }

    fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
        let oidc = input.oidc()?;
        let (claims, subject) = (oidc.claims, oidc.subject);
        let email = str_field(claims, "email").map(str::to_owned);
        Ok(Profile {
            subject: subject.to_owned(),
            email_verified: email.is_some() && bool_field(claims, "email_verified"),
            email,
            name: first_login_name(input),
            username: None,
            picture: None,
            groups: Vec::new(),
            raw: claims.clone(),
        })
    }
}

/// The name from the first authorization's `user` form field, when present and well formed.
fn first_login_name(input: &MapProfileInput) -> Option<String> {
    let user: Value = serde_json::from_str(input.callback_params.get("user")?).ok()?;
    let part = |name| str_field(&user["name"], name).map(str::trim);
    let full = match (part("firstName"), part("lastName")) {
        (Some(first), Some(last)) => format!("{first} {last}"),
        (Some(one), None) | (None, Some(one)) => one.to_owned(),
        (None, None) => return None,
    };
    // A browser-supplied field: keep it to a sane length.
    Some(full.chars().take(200).collect())
}

export_provider!(Apple);

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_provider_sdk::testing::{Harness, Responses};
    use serde_json::json;

    fn claims() -> Value {
        // Shaped after Apple's documented identity token.
        json!({
            "iss": "https://appleid.apple.com",
            "aud": "com.example.web",
            "exp": 1700086400,
            "iat": 1700000000,
            "sub": "001234.5f8e3a1c2b9d4e6f8a0b1c2d3e4f5a6b.1234",
            "nonce": "abc",
            "c_hash": "AbCdEf",
            "email": "x7kq2p9m4r@privaterelay.appleid.com",
            "email_verified": "true",
            "is_private_email": "true",
            "auth_time": 1700000000,
            "nonce_supported": true,
            "real_user_status": 2
        })
    }

    fn with_user(user: &str) -> MapProfileInput {
        let mut input = Responses::new().claims(claims()).input();
        input.callback_params.insert("user".into(), user.into());
        input
    }

    #[test]
    fn first_login_with_a_name_and_a_private_relay_address() {
        let profile = Harness::<Apple>::new()
            .map_profile(&with_user(
                r#"{"name":{"firstName":"Zoë","lastName":"Ångström"},"email":"x7kq2p9m4r@privaterelay.appleid.com"}"#,
            ))
            .unwrap();
        insta::assert_json_snapshot!(profile);
    }

    #[test]
    fn later_logins_have_no_name_and_a_garbled_user_field_is_ignored() {
        let apple = Harness::<Apple>::new();
        let later = apple
            .map_profile(&Responses::new().claims(claims()).input())
            .unwrap();
        assert_eq!(later.name, None);
        assert!(later.email_verified, "\"true\" as a string counts");
        for garbled in [
            "{",
            "[]",
            r#"{"name":"flat"}"#,
            r#"{"name":{"firstName":"  "}}"#,
        ] {
            assert_eq!(
                apple.map_profile(&with_user(garbled)).unwrap().name,
                None,
                "{garbled}"
            );
        }
        let huge = format!(r#"{{"name":{{"firstName":"{}"}}}}"#, "a".repeat(5000));
        assert_eq!(
            apple
                .map_profile(&with_user(&huge))
                .unwrap()
                .name
                .unwrap()
                .len(),
            200
        );
    }

    #[test]
    fn the_client_secret_is_a_jwt_and_name_or_email_means_form_post() {
        let apple = Harness::<Apple>::new();
        let endpoints = apple
            .configure(json!({"team_id": "ABCDE12345", "key_id": "KEY1234567"}))
            .unwrap();
        assert_eq!(endpoints.issuer.as_deref(), Some(ISSUER));
        let jwt = endpoints.client_secret_jwt.unwrap();
        assert_eq!(
            (jwt.issuer.as_str(), jwt.key_id.as_str()),
            ("ABCDE12345", "KEY1234567")
        );
        assert_eq!(jwt.audience, "https://appleid.apple.com");
        assert!(apple
            .configure(json!({"team_id": "A B", "key_id": "K"}))
            .is_err());

        let params = |scopes: &[&str]| {
            apple
                .authorize_params(&AuthorizeInput {
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    ..AuthorizeInput::default()
                })
                .unwrap()
                .params
        };
        assert_eq!(params(&["openid", "name"])["response_mode"], "form_post");
        assert!(params(&["openid"]).is_empty());
    }
}
