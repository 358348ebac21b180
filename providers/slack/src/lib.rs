//! Lanyard provider plugin for "Sign in with Slack" (OpenID Connect, issuer
//! `https://slack.com`).
//!
//! Slack's ID token names the workspace in namespaced claims
//! (`https://slack.com/team_id`, `https://slack.com/team_name`). `team_ids` restricts logins
//! to members of those workspaces; with `fetch_groups` the workspace becomes a group
//! (`team:<id>`). Slack verifies the addresses it hands out (`email_verified`).

use lanyard_provider_sdk::{
    bool_field, export_provider, setting_list, setting_str, str_field, AuthorizeInput,
    AuthorizeParams, CheckClaimsInput, ConfigField, ConfigureInput, Description, Endpoints,
    MapProfileInput, Profile, Protocol, Provider, ProviderError,
};

/// The Slack provider.
#[derive(Debug, Default)]
pub struct Slack;

const ISSUER: &str = "https://slack.com";
const TEAM_ID: &str = "https://slack.com/team_id";

impl Provider for Slack {
    const KIND: &'static str = "slack";

    fn describe(&self) -> Description {
        Description {
            display_name: "Slack".into(),
            protocol: Protocol::Oidc,
            default_scopes: vec!["openid".into(), "email".into(), "profile".into()],
            pkce: true,
            config_fields: vec![
                ConfigField::optional(
                    "team_ids",
                    "Only members of these workspaces (team ids, `T0123...`) may log in.",
                ),
                ConfigField::optional(
                    "issuer",
                    "The issuer (default https://slack.com); for tests and proxies.",
                ),
            ],
            ..Description::default()
        }
    }

    fn configure(&self, input: &ConfigureInput) -> Result<Endpoints, ProviderError> {
        if let Some(value) = input.settings.get("team_ids") {
            if !value.is_array() || setting_list(&input.settings, "team_ids").is_empty() {
                return Err(ProviderError::invalid_config(
                    "`team_ids` is a non-empty list of workspace ids, e.g. [\"T0123ABCD\"]",
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
        if let Some(prompt) = &input.prompt {
            out.params.insert("prompt".into(), prompt.clone());
        }
        // A single allowed workspace: send the user straight to it.
        if let [team] = setting_list(&input.settings, "team_ids").as_slice() {
            out.params.insert("team".into(), team.clone());
        }
        Ok(out)
    }

    fn check_claims(&self, input: &CheckClaimsInput) -> Result<(), ProviderError> {
        let allowed = setting_list(&input.settings, "team_ids");
        if allowed.is_empty() {
            return Ok(());
        }
        match str_field(&input.claims, TEAM_ID) {
            Some(team) if allowed.iter().any(|t| t == team) => Ok(()),
            Some(team) => Err(ProviderError::invalid_claims(format!(
                "workspace `{team}` is not allowed"
            ))),
            None => Err(ProviderError::invalid_claims(
                "the ID token names no workspace",
            )),
        }
    }

    fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
        let oidc = input.oidc()?;
        let (claims, subject) = (oidc.claims, oidc.subject);
        let email = str_field(claims, "email").map(str::to_owned);
        let groups = match (input.fetch_groups, str_field(claims, TEAM_ID)) {
            (true, Some(team)) => vec![format!("team:{team}")],
            _ => Vec::new(),
        };
        let text = |name| str_field(claims, name).map(str::to_owned);
        Ok(Profile {
            subject: subject.to_owned(),
            email_verified: email.is_some() && bool_field(claims, "email_verified"),
            email,
            name: text("name"),
            username: None,
            picture: text("picture"),
            groups,
            raw: claims.clone(),
        })
    }
}

export_provider!(Slack);

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_provider_sdk::testing::{settings_of, Harness, Responses};
    use serde_json::{json, Value};

    fn claims() -> Value {
        // Shaped after Slack's documented "Sign in with Slack" ID token.
        json!({
            "iss": "https://slack.com",
            "sub": "U0R7MFMJM",
            "aud": "25259531569.1115258246291",
            "exp": 1626874955,
            "iat": 1626874655,
            "auth_time": 1626874655,
            "nonce": "abcd",
            "at_hash": "abc...123",
            "https://slack.com/team_id": "T0R7GR",
            "https://slack.com/user_id": "U0R7MFMJM",
            "email": "krane@slack-corp.com",
            "email_verified": true,
            "date_email_verified": 1622128723,
            "locale": "en-US",
            "name": "kraneflannel ✈",
            "picture": "https://secure.gravatar.com/avatar/bc.png",
            "given_name": "",
            "family_name": "",
            "https://slack.com/team_name": "kraneflannel",
            "https://slack.com/team_domain": "kraneflannel"
        })
    }

    #[test]
    fn a_workspace_member_with_the_team_as_group() {
        let profile = Harness::<Slack>::new()
            .map_profile(&Responses::new().claims(claims()).fetch_groups(true).input())
            .unwrap();
        insta::assert_json_snapshot!(profile);
    }

    #[test]
    fn an_unverified_email_is_not_trusted() {
        let mut claims = claims();
        claims["email_verified"] = json!(false);
        let profile = Harness::<Slack>::new()
            .map_profile(&Responses::new().claims(claims).input())
            .unwrap();
        assert!(!profile.email_verified);
        assert!(profile.groups.is_empty(), "groups only when asked");
    }

    #[test]
    fn team_ids_restrict_the_workspace() {
        let slack = Harness::<Slack>::new();
        let check = |claims: Value| {
            slack.check_claims(&CheckClaimsInput {
                settings: settings_of(json!({"team_ids": ["T0R7GR"]})),
                claims,
                ..CheckClaimsInput::default()
            })
        };
        assert!(check(claims()).is_ok());
        let mut other = claims();
        other[TEAM_ID] = json!("T999");
        assert!(check(other).unwrap_err().message.contains("T999"));
        let params = slack
            .authorize_params(&AuthorizeInput {
                settings: settings_of(json!({"team_ids": ["T0R7GR"]})),
                ..AuthorizeInput::default()
            })
            .unwrap()
            .params;
        assert_eq!(params["team"], "T0R7GR");
        assert!(slack.configure(json!({"team_ids": []})).is_err());
    }
}
