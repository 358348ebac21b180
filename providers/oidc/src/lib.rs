//! Lanyard provider plugin for any OpenID Connect issuer, configured by its `issuer` URL.
//!
//! The host discovers the endpoints and verifies the ID token; this plugin asks for the
//! userinfo endpoint only when the ID token carries no email, and maps standard claims.

use lanyard_provider_sdk::{
    export_provider, setting_str, ConfigField, ConfigureInput, Description, Endpoints, HttpRequest,
    MapProfileInput, Profile, ProfileRequestsInput, Protocol, Provider, ProviderError,
};
use serde_json::Value;

/// The generic OpenID Connect provider.
#[derive(Debug, Default)]
pub struct Oidc;

const DEFAULT_GROUPS_CLAIM: &str = "groups";

impl Provider for Oidc {
    const KIND: &'static str = "oidc";

    fn describe(&self) -> Description {
        Description {
            display_name: "OpenID Connect".into(),
            protocol: Protocol::Oidc,
            default_scopes: vec!["openid".into(), "email".into(), "profile".into()],
            pkce: true,
            config_fields: vec![
                ConfigField::required("issuer", "The issuer URL; discovery is read from it."),
                ConfigField::optional(
                    "groups_claim",
                    "The claim that lists the user's groups (default `groups`).",
                ),
            ],
            ..Description::default()
        }
    }

    fn configure(&self, input: &ConfigureInput) -> Result<Endpoints, ProviderError> {
        let issuer = setting_str(&input.settings, "issuer")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ProviderError::invalid_config("`issuer` is required"))?;
        Ok(Endpoints {
            issuer: Some(issuer.to_owned()),
            ..Endpoints::default()
        })
    }

    fn profile_requests(
        &self,
        input: &ProfileRequestsInput,
    ) -> Result<Vec<HttpRequest>, ProviderError> {
        // Userinfo only when the ID token lacks the email.
        Ok(input
            .userinfo()
            .filter(|_| !input.has_claim("email"))
            .into_iter()
            .collect())
    }

    fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
        let oidc = input.oidc()?;
        let (claims, userinfo) = (oidc.claims, oidc.userinfo);
        let (email, email_verified) = oidc.email();
        let groups_claim =
            setting_str(&input.settings, "groups_claim").unwrap_or(DEFAULT_GROUPS_CLAIM);
        let groups = claims
            .get(groups_claim)
            .or_else(|| userinfo.and_then(|u| u.get(groups_claim)))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Profile {
            subject: oidc.subject.to_owned(),
            email,
            email_verified,
            name: oidc.text("name"),
            username: oidc.text("preferred_username"),
            picture: oidc.text("picture"),
            groups,
            raw: claims.clone(),
        })
    }
}

export_provider!(Oidc);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_keycloak_user_with_groups_and_a_string_email_verified() {
        // Shaped after a Keycloak ID token with a groups mapper.
        let claims = json!({
            "exp": 1700000600, "iat": 1700000000, "auth_time": 1699999990,
            "jti": "1b7f5a4e-0c1d-4b8e-9f7a-2d3c4b5a6978",
            "iss": "https://sso.example.com/realms/acme",
            "aud": "lanyard", "sub": "f:4b1c:ada", "typ": "ID", "azp": "lanyard",
            "nonce": "n", "sid": "0d5c6b7a", "acr": "1",
            "email_verified": "true",
            "name": "Ada Łovelace", "preferred_username": "ada",
            "given_name": "Ada", "family_name": "Łovelace",
            "email": "ada@example.com",
            "groups": ["/engineering", "/engineering/platform", "admins"]
        });
        let profile = lanyard_provider_sdk::testing::Harness::<Oidc>::new()
            .map_profile(
                &lanyard_provider_sdk::testing::Responses::new()
                    .claims(claims)
                    .input(),
            )
            .unwrap();
        insta::assert_json_snapshot!(profile);
    }

    #[test]
    fn no_email_in_the_token_and_an_unverified_one_in_userinfo() {
        let profile = lanyard_provider_sdk::testing::Harness::<Oidc>::new()
            .map_profile(
                &lanyard_provider_sdk::testing::Responses::new()
                    .claims(json!({"sub": "248289761001", "iss": "https://sso.example.com"}))
                    .ok(
                        "userinfo",
                        json!({"sub": "248289761001", "email": "jane@example.com",
                               "email_verified": false, "name": "Jane Doe",
                               "picture": "http://example.com/janedoe/me.jpg"}),
                    )
                    .input(),
            )
            .unwrap();
        insta::assert_json_snapshot!(profile);
    }

    #[test]
    fn userinfo_for_another_subject_is_ignored() {
        let mut input = MapProfileInput {
            claims: Some(json!({"sub": "a"})),
            ..MapProfileInput::default()
        };
        input.responses.insert(
            "userinfo".into(),
            lanyard_provider_sdk::HttpResponse {
                status: 200,
                body: json!({"sub": "b", "email": "b@x.test", "email_verified": true}),
            },
        );
        let profile = Oidc.map_profile(&input).unwrap();
        assert_eq!(profile.email, None);
        assert!(!profile.email_verified);
    }
}
