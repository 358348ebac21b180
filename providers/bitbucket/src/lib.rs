//! Lanyard provider plugin for Bitbucket Cloud (plain OAuth2).
//!
//! Profile from `GET /2.0/user` (the account's `uuid` is the subject: usernames can change);
//! the email from `GET /2.0/user/emails`, only the primary one and only when Bitbucket marks
//! it confirmed. With `fetch_groups`, the workspaces the user belongs to become groups
//! (their slugs).

use lanyard_provider_sdk::{
    bool_field, export_provider, setting_url, str_field, ConfigField, ConfigureInput, Description,
    Endpoints, HttpRequest, MapProfileInput, Profile, ProfileRequestsInput, Protocol, Provider,
    ProviderError,
};
use serde_json::Value;

/// The Bitbucket provider.
#[derive(Debug, Default)]
pub struct Bitbucket;

const DEFAULT_BASE_URL: &str = "https://bitbucket.org";
const DEFAULT_API_URL: &str = "https://api.bitbucket.org";

impl Provider for Bitbucket {
    const KIND: &'static str = "bitbucket";

    fn describe(&self) -> Description {
        Description {
            display_name: "Bitbucket".into(),
            protocol: Protocol::OAuth2,
            default_scopes: vec!["account".into(), "email".into()],
            pkce: true,
            config_fields: vec![
                ConfigField::optional(
                    "base_url",
                    "Web base URL (default https://bitbucket.org); for tests and proxies.",
                ),
                ConfigField::optional(
                    "api_url",
                    "API base URL (default https://api.bitbucket.org); for tests and proxies.",
                ),
            ],
            ..Description::default()
        }
    }

    fn configure(&self, input: &ConfigureInput) -> Result<Endpoints, ProviderError> {
        let base = setting_url(&input.settings, "base_url", DEFAULT_BASE_URL)?;
        let api = setting_url(&input.settings, "api_url", DEFAULT_API_URL)?;
        Ok(Endpoints {
            authorization_url: Some(format!("{base}/site/oauth2/authorize")),
            token_url: Some(format!("{base}/site/oauth2/access_token")),
            userinfo_url: Some(format!("{api}/2.0/user")),
            ..Endpoints::default()
        })
    }

    fn profile_requests(
        &self,
        input: &ProfileRequestsInput,
    ) -> Result<Vec<HttpRequest>, ProviderError> {
        let api = setting_url(&input.settings, "api_url", DEFAULT_API_URL)?;
        let mut requests = vec![
            HttpRequest::get("user", &format!("{api}/2.0/user")),
            HttpRequest::get("emails", &format!("{api}/2.0/user/emails")).optional(),
        ];
        if input.fetch_groups {
            requests.push(
                HttpRequest::get("workspaces", &format!("{api}/2.0/workspaces?pagelen=100"))
                    .optional(),
            );
        }
        Ok(requests)
    }

    fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
        let user = input.response("user")?;
        let subject = str_field(user, "uuid")
            .or_else(|| str_field(user, "account_id"))
            .ok_or_else(|| ProviderError::invalid_profile("Bitbucket's user has no uuid"))?;
        let email = values(input.optional_response("emails"))
            .find(|e| bool_field(e, "is_primary") && bool_field(e, "is_confirmed"))
            .and_then(|e| str_field(e, "email"))
            .map(str::to_owned);
        let groups = if input.fetch_groups {
            values(input.optional_response("workspaces"))
                .filter_map(|w| str_field(w, "slug"))
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        };
        Ok(Profile {
            subject: subject.to_owned(),
            email_verified: email.is_some(),
            email,
            name: str_field(user, "display_name").map(str::to_owned),
            username: str_field(user, "username")
                .or_else(|| str_field(user, "nickname"))
                .map(str::to_owned),
            picture: user
                .pointer("/links/avatar/href")
                .and_then(Value::as_str)
                .map(str::to_owned),
            groups,
            raw: user.clone(),
        })
    }
}

/// The `values` of one of Bitbucket's paginated answers.
fn values(page: Option<&Value>) -> impl Iterator<Item = &Value> {
    page.and_then(|p| p.get("values"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

export_provider!(Bitbucket);

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_provider_sdk::testing::{Harness, Responses};
    use serde_json::json;

    fn user() -> Value {
        // Shaped after Bitbucket Cloud's documented `GET /2.0/user`.
        json!({
            "type": "user",
            "uuid": "{d301aafa-d676-4ee0-88be-962be7417567}",
            "account_id": "557058:c0b72ad0-1cb5-4018-9cdc-0cde8492c443",
            "nickname": "evzijst",
            "display_name": "Erik van Zijst",
            "links": {
                "avatar": {"href": "https://avatar-management--avatars.us-west-2.prod.public.atl-paas.net/initials/EZ-1.png"},
                "html": {"href": "https://bitbucket.org/%7Bd301aafa-d676-4ee0-88be-962be7417567%7D/"}
            },
            "created_on": "2010-06-15T22:19:17.427355+00:00",
            "account_status": "active",
            "has_2fa_enabled": null
        })
    }

    fn emails(primary_confirmed: bool) -> Value {
        json!({
            "pagelen": 10,
            "page": 1,
            "size": 2,
            "values": [
                {"type": "email", "email": "old@example.com", "is_primary": false, "is_confirmed": true},
                {"type": "email", "email": "erik@example.com", "is_primary": true, "is_confirmed": primary_confirmed}
            ]
        })
    }

    #[test]
    fn a_user_with_a_confirmed_primary_email_and_workspaces() {
        let workspaces = json!({"values": [
            {"type": "workspace", "slug": "atlassian", "name": "Atlassian"},
            {"type": "workspace", "slug": "ünïcode-team", "name": "Ünïcode"}
        ]});
        let profile = Harness::<Bitbucket>::new()
            .map_profile(
                &Responses::new()
                    .ok("user", user())
                    .ok("emails", emails(true))
                    .ok("workspaces", workspaces)
                    .fetch_groups(true)
                    .input(),
            )
            .unwrap();
        insta::assert_json_snapshot!(profile);
    }

    #[test]
    fn an_unconfirmed_primary_email_is_no_email() {
        let profile = Harness::<Bitbucket>::new()
            .map_profile(
                &Responses::new()
                    .ok("user", user())
                    .ok("emails", emails(false))
                    .input(),
            )
            .unwrap();
        assert_eq!((profile.email, profile.email_verified), (None, false));
    }

    #[test]
    fn emails_forbidden_still_logs_in_without_email() {
        let profile = Harness::<Bitbucket>::new()
            .map_profile(
                &Responses::new()
                    .ok("user", user())
                    .status("emails", 403, json!({"type": "error"}))
                    .input(),
            )
            .unwrap();
        assert_eq!(profile.subject, "{d301aafa-d676-4ee0-88be-962be7417567}");
        assert_eq!(profile.email, None);
    }
}
