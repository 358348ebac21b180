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
