//! Lanyard provider plugin for any plain OAuth2 API, described entirely in config: where to
//! send the user, where to exchange the code, where to read the profile, and where each
//! profile field sits in that JSON (RFC 6901 JSON pointers). This is how a provider with no
//! plugin of its own is added from config alone.
//!
//! ```toml
//! [[providers]]
//! id = "acme"
//! kind = "oauth2"
//! client_id = "..."
//! client_secret_env = "ACME_SECRET"
//! redirect_uris = ["https://app.example/cb"]
//! scopes = ["profile", "email"]
//! authorization_url = "https://id.acme.example/oauth/authorize"
//! token_url = "https://id.acme.example/oauth/token"
//! userinfo_url = "https://api.acme.example/v1/me"
//! token_auth = "basic"                    # or "body"
//! subject_pointer = "/data/id"            # required
//! email_pointer = "/data/email"
//! email_verified_pointer = "/data/email_confirmed"
//! name_pointer = "/data/display_name"
//! username_pointer = "/data/handle"
//! picture_pointer = "/data/avatar/url"
//! groups_pointer = "/data/teams"          # an array of strings, or of objects with:
//! group_name_pointer = "/slug"            # where each object's name sits
//! ```
//!
//! An email counts as verified only when `email_verified_pointer` is set and points at
//! `true` (or the string `"true"`): an API that says nothing about verification gets no
//! trust.

use lanyard_provider_sdk::{
    export_provider, setting_str, ConfigField, ConfigureInput, Description, Endpoints, HttpRequest,
    MapProfileInput, Profile, ProfileRequestsInput, Protocol, Provider, ProviderError, Settings,
    TokenAuth,
};
use serde_json::Value;

/// The generic OAuth2 provider.
#[derive(Debug, Default)]
pub struct OAuth2;

const URL_FIELDS: [&str; 3] = ["authorization_url", "token_url", "userinfo_url"];
const POINTER_FIELDS: [&str; 8] = [
    "subject_pointer",
    "email_pointer",
    "email_verified_pointer",
    "name_pointer",
    "username_pointer",
    "picture_pointer",
    "groups_pointer",
    "group_name_pointer",
];

impl Provider for OAuth2 {
    const KIND: &'static str = "oauth2";

    fn describe(&self) -> Description {
        Description {
            display_name: "OAuth2 (generic)".into(),
            protocol: Protocol::OAuth2,
            default_scopes: Vec::new(),
            // Servers that do not know PKCE ignore its parameters (RFC 7636 section 5).
            pkce: true,
            config_fields: vec![
                ConfigField::required("authorization_url", "Where the user's browser is sent."),
                ConfigField::required("token_url", "Where the code is exchanged for tokens."),
                ConfigField::optional(
                    "device_authorization_url",
                    "The RFC 8628 device authorization endpoint, when the API offers the device flow.",
                ),
                ConfigField::required(
                    "userinfo_url",
                    "The JSON profile, read with the user's access token.",
                ),
                ConfigField::optional(
                    "token_auth",
                    "Client authentication at the token URL: `basic` (default) or `body`.",
                ),
                ConfigField::required(
                    "subject_pointer",
                    "JSON pointer to the user's stable id in the profile (e.g. `/id`).",
                ),
                ConfigField::optional("email_pointer", "JSON pointer to the email."),
                ConfigField::optional(
                    "email_verified_pointer",
                    "JSON pointer to a boolean saying the email is verified; without it no email is trusted.",
                ),
                ConfigField::optional("name_pointer", "JSON pointer to the display name."),
                ConfigField::optional("username_pointer", "JSON pointer to the username."),
                ConfigField::optional("picture_pointer", "JSON pointer to the picture URL."),
                ConfigField::optional(
                    "groups_pointer",
                    "JSON pointer to an array of group names (or of objects, with group_name_pointer).",
                ),
                ConfigField::optional(
                    "group_name_pointer",
                    "Within each object of the groups array, the JSON pointer to its name.",
                ),
            ],
            endpoints: None,
            ..Description::default()
        }
    }

    fn configure(&self, input: &ConfigureInput) -> Result<Endpoints, ProviderError> {
        let settings = &input.settings;
        for field in URL_FIELDS {
            let url = setting_str(settings, field)
                .ok_or_else(|| ProviderError::invalid_config(format!("`{field}` is required")))?;
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ProviderError::invalid_config(format!(
                    "`{field}` must be an http(s) URL, not `{url}`"
                )));
            }
        }
        if setting_str(settings, "subject_pointer").is_none() {
            return Err(ProviderError::invalid_config(
                "`subject_pointer` is required",
            ));
        }
        for field in POINTER_FIELDS {
            match settings.get(field) {
                None => {}
                Some(Value::String(p)) if p.is_empty() || p.starts_with('/') => {}
                Some(other) => {
                    return Err(ProviderError::invalid_config(format!(
                        "`{field}` must be a JSON pointer such as \"/id\", not {other}"
                    )))
                }
            }
        }
        let token_auth = match setting_str(settings, "token_auth") {
            None | Some("basic") => TokenAuth::ClientSecretBasic,
            Some("body") => TokenAuth::ClientSecretPost,
            Some(other) => {
                return Err(ProviderError::invalid_config(format!(
                    "`token_auth` is `basic` or `body`, not `{other}`"
                )))
            }
        };
        let url = |field| setting_str(settings, field).map(str::to_owned);
        Ok(Endpoints {
            authorization_url: url("authorization_url"),
            token_url: url("token_url"),
            userinfo_url: url("userinfo_url"),
            device_authorization_url: url("device_authorization_url"),
            token_auth,
            ..Endpoints::default()
        })
    }

    fn profile_requests(
        &self,
        input: &ProfileRequestsInput,
    ) -> Result<Vec<HttpRequest>, ProviderError> {
        let url = input
            .endpoints
            .userinfo_url
            .as_deref()
            .ok_or_else(|| ProviderError::invalid_config("`userinfo_url` is required"))?;
        Ok(vec![
            HttpRequest::get("userinfo", url).header("Accept", "application/json")
        ])
    }

    fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
        let me = input.response("userinfo")?;
        let settings = &input.settings;
        let subject = match pointed(settings, me, "subject_pointer") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(ProviderError::invalid_profile(format!(
                    "the profile has no subject at `{}`",
                    setting_str(settings, "subject_pointer").unwrap_or_default()
                )))
            }
        };
        let text = |field| pointed(settings, me, field).and_then(non_empty);
        let email = text("email_pointer");
        let verified = match pointed(settings, me, "email_verified_pointer") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            _ => false,
        };
        let name_in_group = setting_str(settings, "group_name_pointer");
        let groups = pointed(settings, me, "groups_pointer")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| match (item, name_in_group) {
                        (Value::String(s), _) => Some(s.clone()),
                        (Value::Object(_), Some(p)) => item.pointer(p).and_then(non_empty),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Profile {
            subject,
            email_verified: email.is_some() && verified,
            email,
            name: text("name_pointer"),
            username: text("username_pointer"),
            picture: text("picture_pointer"),
            groups,
            raw: me.clone(),
        })
    }
}

/// The value the pointer in setting `field` selects, when the setting is present.
fn pointed<'a>(settings: &Settings, value: &'a Value, field: &str) -> Option<&'a Value> {
    value.pointer(setting_str(settings, field)?)
}

fn non_empty(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

export_provider!(OAuth2);

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_provider_sdk::testing::{Harness, Responses};
    use serde_json::json;

    fn settings() -> Value {
        json!({
            "authorization_url": "https://id.acme.test/oauth/authorize",
            "token_url": "https://id.acme.test/oauth/token",
            "userinfo_url": "https://api.acme.test/v1/me",
            "token_auth": "body",
            "subject_pointer": "/data/id",
            "email_pointer": "/data/email",
            "email_verified_pointer": "/data/email_confirmed",
            "name_pointer": "/data/display_name",
            "username_pointer": "/data/handle",
            "picture_pointer": "/data/avatar/url",
            "groups_pointer": "/data/teams",
            "group_name_pointer": "/slug",
        })
    }

    fn profile(me: Value) -> Result<Profile, ProviderError> {
        Harness::<OAuth2>::new().map_profile(
            &Responses::new()
                .settings(settings())
                .ok("userinfo", me)
                .input(),
        )
    }

    #[test]
    fn configure_checks_urls_pointers_and_client_auth() {
        let acme = Harness::<OAuth2>::new();
        let endpoints = acme.configure(settings()).unwrap();
        assert_eq!(endpoints.token_auth, TokenAuth::ClientSecretPost);
        assert_eq!(
            endpoints.userinfo_url.as_deref(),
            Some("https://api.acme.test/v1/me")
        );
        let mut missing = settings();
        missing.as_object_mut().unwrap().remove("token_url");
        assert!(acme
            .configure(missing)
            .unwrap_err()
            .message
            .contains("token_url"));
        let mut bad = settings();
        bad["email_pointer"] = json!("data.email");
        assert!(acme
            .configure(bad)
            .unwrap_err()
            .message
            .contains("email_pointer"));
        let mut bad = settings();
        bad["token_auth"] = json!("jwt");
        assert!(acme
            .configure(bad)
            .unwrap_err()
            .message
            .contains("token_auth"));
    }

    #[test]
    fn a_full_profile() {
        insta::assert_json_snapshot!(profile(json!({"data": {
            "id": 90210,
            "email": "zoë@acme.test",
            "email_confirmed": true,
            "display_name": "Zoë Ångström",
            "handle": "zoe",
            "avatar": {"url": "https://cdn.acme.test/a/90210.png"},
            "teams": [{"slug": "platform"}, {"slug": "sre"}, {"name": "no slug"}],
        }}))
        .unwrap());
    }

    #[test]
    fn an_unconfirmed_email_is_not_verified_and_missing_fields_are_none() {
        insta::assert_json_snapshot!(profile(json!({"data": {
            "id": "u-1",
            "email": "someone@acme.test",
            "email_confirmed": "no",
            "display_name": "   ",
        }}))
        .unwrap());
    }

    #[test]
    fn no_subject_is_an_error() {
        let error = profile(json!({"data": {"email": "x@acme.test"}})).unwrap_err();
        assert!(error.message.contains("/data/id"), "{error}");
    }

    #[test]
    fn a_huge_group_list_is_kept_whole() {
        let teams: Vec<Value> = (0..5000).map(|i| json!(format!("team-{i}"))).collect();
        let mut s = settings();
        s.as_object_mut().unwrap().remove("group_name_pointer");
        let profile = Harness::<OAuth2>::new()
            .map_profile(
                &Responses::new()
                    .settings(s)
                    .ok("userinfo", json!({"data": {"id": 1, "teams": teams}}))
                    .input(),
            )
            .unwrap();
        assert_eq!(profile.groups.len(), 5000);
        assert_eq!(profile.groups[4999], "team-4999");
    }
}
