//! Lanyard provider plugin for GitHub and GitHub Enterprise Server (plain OAuth2).
//!
//! Profile from `/user`; the email only from `/user/emails` when it is primary *and*
//! verified; groups from `/user/orgs` (`org`) and `/user/teams` (`org/team`) when a login asks
//! for them.

use lanyard_provider_sdk::{
    export_provider, setting_str, AuthorizeInput, AuthorizeParams, ConfigField, ConfigureInput,
    Description, Endpoints, HttpRequest, MapProfileInput, Profile, ProfileRequestsInput, Protocol,
    Provider, ProviderError, TokenAuth,
};
use serde_json::Value;

/// The GitHub provider.
#[derive(Debug, Default)]
pub struct GitHub;

const DEFAULT_BASE_URL: &str = "https://github.com";
const DEFAULT_API_URL: &str = "https://api.github.com";

impl Provider for GitHub {
    const KIND: &'static str = "github";

    fn describe(&self) -> Description {
        Description {
            display_name: "GitHub".into(),
            protocol: Protocol::OAuth2,
            default_scopes: vec!["read:user".into(), "user:email".into()],
            group_scopes: vec!["read:org".into()],
            pkce: true,
            config_fields: vec![
                ConfigField::optional(
                    "base_url",
                    "Web base URL (default https://github.com; GitHub Enterprise: its host).",
                ),
                ConfigField::optional(
                    "api_url",
                    "REST API base URL (default https://api.github.com; Enterprise: BASE/api/v3).",
                ),
            ],
            ..Description::default()
        }
    }

    fn configure(&self, input: &ConfigureInput) -> Result<Endpoints, ProviderError> {
        let base = base_url(&input.settings);
        let api = api_url(&input.settings);
        Ok(Endpoints {
            authorization_url: Some(format!("{base}/login/oauth/authorize")),
            token_url: Some(format!("{base}/login/oauth/access_token")),
            userinfo_url: Some(format!("{api}/user")),
            // The device flow must also be enabled in the OAuth app's settings.
            device_authorization_url: Some(format!("{base}/login/device/code")),
            token_auth: TokenAuth::ClientSecretPost,
            ..Endpoints::default()
        })
    }

    fn authorize_params(&self, input: &AuthorizeInput) -> Result<AuthorizeParams, ProviderError> {
        let mut out = AuthorizeParams::default();
        if let Some(hint) = &input.login_hint {
            out.params.insert("login".into(), hint.clone());
        }
        if let Some(prompt) = &input.prompt {
            out.params.insert("prompt".into(), prompt.clone());
        }
        Ok(out)
    }

    fn profile_requests(
        &self,
        input: &ProfileRequestsInput,
    ) -> Result<Vec<HttpRequest>, ProviderError> {
        let api = api_url(&input.settings);
        let get = |name: &str, path: &str| {
            HttpRequest::get(name, &format!("{api}{path}"))
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28")
        };
        let mut requests = vec![
            get("user", "/user"),
            get("emails", "/user/emails").optional(),
        ];
        if input.fetch_groups {
            requests.push(get("orgs", "/user/orgs?per_page=100").optional());
            requests.push(get("teams", "/user/teams?per_page=100").optional());
        }
        Ok(requests)
    }

    fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
        let user = input.response("user")?;
        let subject = match &user["id"] {
            Value::Number(n) => n.to_string(),
            Value::String(s) if !s.is_empty() => s.clone(),
            _ => return Err(ProviderError::invalid_profile("GitHub /user has no id")),
        };
        let email = input
            .optional_response("emails")
            .and_then(Value::as_array)
            .and_then(|emails| {
                emails.iter().find(|e| {
                    e["primary"].as_bool() == Some(true) && e["verified"].as_bool() == Some(true)
                })
            })
            .and_then(|e| e["email"].as_str())
            .map(str::to_owned);
        let mut groups: Vec<String> = Vec::new();
        if input.fetch_groups {
            if let Some(orgs) = input.optional_response("orgs").and_then(Value::as_array) {
                groups.extend(
                    orgs.iter()
                        .filter_map(|o| o["login"].as_str())
                        .map(str::to_owned),
                );
            }
            if let Some(teams) = input.optional_response("teams").and_then(Value::as_array) {
                groups.extend(teams.iter().filter_map(|t| {
                    Some(format!(
                        "{}/{}",
                        t["organization"]["login"].as_str()?,
                        t["slug"].as_str()?
                    ))
                }));
            }
        }
        Ok(Profile {
            subject,
            email_verified: email.is_some(),
            email,
            name: non_empty(&user["name"]),
            username: non_empty(&user["login"]),
            picture: non_empty(&user["avatar_url"]),
            groups,
            raw: user.clone(),
        })
    }
}

fn non_empty(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

fn base_url(settings: &lanyard_provider_sdk::Settings) -> String {
    setting_str(settings, "base_url")
        .unwrap_or(DEFAULT_BASE_URL)
        .trim_end_matches('/')
        .to_owned()
}

fn api_url(settings: &lanyard_provider_sdk::Settings) -> String {
    setting_str(settings, "api_url")
        .unwrap_or(DEFAULT_API_URL)
        .trim_end_matches('/')
        .to_owned()
}

export_provider!(GitHub);

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_provider_sdk::HttpResponse;
    use serde_json::json;

    fn input(emails: Value, fetch_groups: bool) -> MapProfileInput {
        let ok = |body: Value| HttpResponse { status: 200, body };
        let mut input = MapProfileInput {
            fetch_groups,
            ..MapProfileInput::default()
        };
        input.responses.insert(
            "user".into(),
            ok(json!({"id": 583231, "login": "octocat", "name": "", "avatar_url": "https://a/1"})),
        );
        input.responses.insert("emails".into(), ok(emails));
        input
            .responses
            .insert("orgs".into(), ok(json!([{"login": "acme"}])));
        input.responses.insert(
            "teams".into(),
            ok(json!([{"slug": "core", "organization": {"login": "acme"}}, {"slug": "x"}])),
        );
        input
    }

    #[test]
    fn email_must_be_primary_and_verified() {
        let emails = json!([
            {"email": "verified-secondary@x.test", "primary": false, "verified": true},
            {"email": "primary@x.test", "primary": true, "verified": true},
        ]);
        let profile = GitHub.map_profile(&input(emails, false)).unwrap();
        assert_eq!(profile.subject, "583231");
        assert_eq!(profile.email.as_deref(), Some("primary@x.test"));
        assert!(profile.email_verified);
        assert_eq!(profile.name, None, "an empty name is no name");
        assert!(profile.groups.is_empty(), "groups only when asked");

        let unverified = json!([
            {"email": "verified-secondary@x.test", "primary": false, "verified": true},
            {"email": "primary@x.test", "primary": true, "verified": false},
        ]);
        let profile = GitHub.map_profile(&input(unverified, false)).unwrap();
        assert_eq!((profile.email, profile.email_verified), (None, false));
    }

    #[test]
    fn a_user_with_no_public_email_and_many_teams() {
        // Shaped after GitHub's documented `GET /user`: `email` is null when not public.
        let mut input = input(
            json!([{"email": "octocat@github.com", "primary": true, "verified": true,
                    "visibility": "private"}]),
            true,
        );
        input.responses.get_mut("user").unwrap().body = json!({
            "login": "octocat", "id": 1, "node_id": "MDQ6VXNlcjE=",
            "avatar_url": "https://github.com/images/error/octocat_happy.gif",
            "type": "User", "site_admin": false, "name": "monalisa octocat",
            "company": "GitHub", "email": null, "bio": "There once was...",
        });
        let teams: Vec<Value> = (0..300)
            .map(|i| json!({"slug": format!("team-{i}"), "organization": {"login": "acme"}}))
            .collect();
        input.responses.get_mut("teams").unwrap().body = Value::Array(teams);
        let profile = lanyard_provider_sdk::testing::Harness::<GitHub>::new()
            .map_profile(&input)
            .unwrap();
        assert_eq!(profile.groups.len(), 301);
        let mut shown = profile.clone();
        shown.groups.truncate(3);
        insta::assert_json_snapshot!(shown);
    }

    #[test]
    fn groups_are_orgs_and_org_slash_team() {
        let profile = GitHub.map_profile(&input(json!([]), true)).unwrap();
        assert_eq!(profile.groups, ["acme", "acme/core"]);
    }

    #[test]
    fn enterprise_urls_come_from_settings() {
        let mut settings = lanyard_provider_sdk::Settings::new();
        settings.insert("base_url".into(), json!("https://ghe.test/"));
        settings.insert("api_url".into(), json!("https://ghe.test/api/v3"));
        let endpoints = GitHub
            .configure(&ConfigureInput {
                id: "ghe".into(),
                settings,
            })
            .unwrap();
        assert_eq!(
            endpoints.authorization_url.as_deref(),
            Some("https://ghe.test/login/oauth/authorize")
        );
        assert_eq!(
            endpoints.userinfo_url.as_deref(),
            Some("https://ghe.test/api/v3/user")
        );
    }
}
