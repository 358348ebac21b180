//! Lanyard provider plugin for GitLab: gitlab.com or a self-managed instance (OpenID
//! Connect; the instance's base URL is its issuer).
//!
//! Groups: GitLab's ID token lists the user's direct group memberships (full paths, e.g.
//! `acme/platform`) in `groups_direct`; its userinfo answer lists them in `groups`. When a
//! login asks for groups and the ID token has none, the host reads userinfo. GitLab sets
//! `email_verified` when the address is confirmed.

use lanyard_provider_sdk::{
    export_provider, setting_url, string_list, ConfigField, ConfigureInput, Description, Endpoints,
    HttpRequest, MapProfileInput, Profile, ProfileRequestsInput, Protocol, Provider, ProviderError,
};

/// The GitLab provider.
#[derive(Debug, Default)]
pub struct GitLab;

const DEFAULT_BASE_URL: &str = "https://gitlab.com";

impl Provider for GitLab {
    const KIND: &'static str = "gitlab";

    fn describe(&self) -> Description {
        Description {
            display_name: "GitLab".into(),
            protocol: Protocol::Oidc,
            default_scopes: vec!["openid".into(), "email".into(), "profile".into()],
            pkce: true,
            config_fields: vec![ConfigField::optional(
                "base_url",
                "The GitLab instance (default https://gitlab.com); it is the OIDC issuer.",
            )],
            ..Description::default()
        }
    }

    fn configure(&self, input: &ConfigureInput) -> Result<Endpoints, ProviderError> {
        let base = setting_url(&input.settings, "base_url", DEFAULT_BASE_URL)?;
        Ok(Endpoints {
            // GitLab 17.2 and later offer the device flow; named here rather than left to
            // the discovery document.
            device_authorization_url: Some(format!("{base}/oauth/authorize_device")),
            issuer: Some(base),
            ..Endpoints::default()
        })
    }

    fn profile_requests(
        &self,
        input: &ProfileRequestsInput,
    ) -> Result<Vec<HttpRequest>, ProviderError> {
        let has_groups = input
            .claims
            .as_ref()
            .is_some_and(|c| c.get("groups_direct").is_some());
        let wanted = !input.has_claim("email") || (input.fetch_groups && !has_groups);
        Ok(input.userinfo().filter(|_| wanted).into_iter().collect())
    }

    fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
        let oidc = input.oidc()?;
        let (claims, userinfo) = (oidc.claims, oidc.userinfo);
        let (email, email_verified) = oidc.email();
        let groups = if !input.fetch_groups {
            Vec::new()
        } else if claims.get("groups_direct").is_some() {
            string_list(claims, "groups_direct")
        } else {
            userinfo
                .map(|u| string_list(u, "groups"))
                .unwrap_or_default()
        };
        Ok(Profile {
            subject: oidc.subject.to_owned(),
            email,
            email_verified,
            name: oidc.text("name"),
            username: oidc
                .text("nickname")
                .or_else(|| oidc.text("preferred_username")),
            picture: oidc.text("picture"),
            groups,
            raw: claims.clone(),
        })
    }
}

export_provider!(GitLab);

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_provider_sdk::testing::{Harness, Responses};
    use serde_json::{json, Value};

    fn claims() -> Value {
        // Shaped after the ID token gitlab.com issues (GitLab docs, "OpenID Connect").
        json!({
            "iss": "https://gitlab.com",
            "sub": "1234567",
            "aud": "5c8f3e1e3d9b",
            "exp": 1700000600,
            "iat": 1700000000,
            "auth_time": 1699999000,
            "sub_legacy": "2d9c9f1e0e5f0d7a",
            "name": "Łukasz Nowak",
            "nickname": "lnowak",
            "preferred_username": "lnowak",
            "email": "lukasz@example.pl",
            "email_verified": true,
            "website": "",
            "profile": "https://gitlab.com/lnowak",
            "picture": "https://gitlab.com/uploads/-/system/user/avatar/1234567/avatar.png",
            "groups_direct": ["acme", "acme/platform", "oss/ünïcode"]
        })
    }

    #[test]
    fn a_user_with_direct_groups() {
        let profile = Harness::<GitLab>::new()
            .map_profile(&Responses::new().claims(claims()).fetch_groups(true).input())
            .unwrap();
        insta::assert_json_snapshot!(profile);
    }

    #[test]
    fn groups_from_userinfo_when_the_token_has_none_and_an_unconfirmed_email() {
        let mut claims = claims();
        let map = claims.as_object_mut().unwrap();
        map.remove("groups_direct");
        map.insert("email_verified".into(), json!(false));
        let userinfo = json!({
            "sub": "1234567",
            "groups": ["acme", "acme/platform"],
            "https://gitlab.org/claims/groups/owner": ["acme"],
        });
        let profile = Harness::<GitLab>::new()
            .map_profile(
                &Responses::new()
                    .claims(claims)
                    .ok("userinfo", userinfo)
                    .fetch_groups(true)
                    .input(),
            )
            .unwrap();
        insta::assert_json_snapshot!(profile);
    }

    #[test]
    fn userinfo_only_when_needed() {
        let gitlab = Harness::<GitLab>::new();
        let input = |claims: Value, fetch_groups| ProfileRequestsInput {
            claims: Some(claims),
            fetch_groups,
            endpoints: Endpoints {
                userinfo_url: Some("https://gitlab.com/oauth/userinfo".into()),
                ..Endpoints::default()
            },
            ..ProfileRequestsInput::default()
        };
        assert!(gitlab
            .profile_requests(&input(claims(), true))
            .unwrap()
            .is_empty());
        let mut bare = claims();
        bare.as_object_mut().unwrap().remove("groups_direct");
        assert!(gitlab
            .profile_requests(&input(bare.clone(), false))
            .unwrap()
            .is_empty());
        assert_eq!(
            gitlab.profile_requests(&input(bare, true)).unwrap().len(),
            1
        );
    }

    #[test]
    fn self_managed_base_url_is_the_issuer() {
        let endpoints = Harness::<GitLab>::new()
            .configure(json!({"base_url": "https://gitlab.example.com/"}))
            .unwrap();
        assert_eq!(
            endpoints.issuer.as_deref(),
            Some("https://gitlab.example.com")
        );
        assert_eq!(
            endpoints.device_authorization_url.as_deref(),
            Some("https://gitlab.example.com/oauth/authorize_device")
        );
        assert!(Harness::<GitLab>::new()
            .configure(json!({"base_url": "gitlab.example.com"}))
            .is_err());
    }
}
