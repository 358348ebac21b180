//! Lanyard provider plugin for Discord (plain OAuth2).
//!
//! Profile from `GET /api/users/@me` (scopes `identify email`): the snowflake `id` is the
//! subject, `verified` says whether the email is verified, `global_name` is the display
//! name, and the avatar hash becomes a CDN URL. With `fetch_groups` the login also asks for
//! `guilds` and the user's servers become groups (`guild:<id>`; names change, ids do not).

use lanyard_provider_sdk::{
    bool_field, export_provider, setting_url, str_field, ConfigField, ConfigureInput, Description,
    Endpoints, HttpRequest, MapProfileInput, Profile, ProfileRequestsInput, Protocol, Provider,
    ProviderError,
};
use serde_json::Value;

/// The Discord provider.
#[derive(Debug, Default)]
pub struct Discord;

const DEFAULT_BASE_URL: &str = "https://discord.com";
const CDN: &str = "https://cdn.discordapp.com";

impl Provider for Discord {
    const KIND: &'static str = "discord";

    fn describe(&self) -> Description {
        Description {
            display_name: "Discord".into(),
            protocol: Protocol::OAuth2,
            default_scopes: vec!["identify".into(), "email".into()],
            group_scopes: vec!["guilds".into()],
            pkce: true,
            config_fields: vec![ConfigField::optional(
                "base_url",
                "Discord's base URL (default https://discord.com); for tests and proxies.",
            )],
            ..Description::default()
        }
    }

    fn configure(&self, input: &ConfigureInput) -> Result<Endpoints, ProviderError> {
        let base = setting_url(&input.settings, "base_url", DEFAULT_BASE_URL)?;
        Ok(Endpoints {
            authorization_url: Some(format!("{base}/oauth2/authorize")),
            token_url: Some(format!("{base}/api/oauth2/token")),
            userinfo_url: Some(format!("{base}/api/users/@me")),
            ..Endpoints::default()
        })
    }

    fn profile_requests(
        &self,
        input: &ProfileRequestsInput,
    ) -> Result<Vec<HttpRequest>, ProviderError> {
        let me = input
            .endpoints
            .userinfo_url
            .clone()
            .ok_or_else(|| ProviderError::invalid_config("no user endpoint"))?;
        let mut requests = vec![HttpRequest::get("user", &me)];
        if input.fetch_groups {
            requests.push(HttpRequest::get("guilds", &format!("{me}/guilds")).optional());
        }
        Ok(requests)
    }

    fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
        let user = input.response("user")?;
        let id = str_field(user, "id")
            .ok_or_else(|| ProviderError::invalid_profile("Discord's user has no id"))?;
        let email = str_field(user, "email").map(str::to_owned);
        let picture = str_field(user, "avatar").map(|hash| {
            let ext = if hash.starts_with("a_") { "gif" } else { "png" };
            format!("{CDN}/avatars/{id}/{hash}.{ext}")
        });
        let groups = if input.fetch_groups {
            input
                .optional_response("guilds")
                .and_then(Value::as_array)
                .map(|guilds| {
                    guilds
                        .iter()
                        .filter_map(|g| str_field(g, "id"))
                        .map(|id| format!("guild:{id}"))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Profile {
            subject: id.to_owned(),
            email_verified: email.is_some() && bool_field(user, "verified"),
            email,
            name: str_field(user, "global_name")
                .or_else(|| str_field(user, "username"))
                .map(str::to_owned),
            username: str_field(user, "username").map(str::to_owned),
            picture,
            groups,
            raw: user.clone(),
        })
    }
}

export_provider!(Discord);

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_provider_sdk::testing::{Harness, Responses};
    use serde_json::json;

    #[test]
    fn a_user_with_guilds_and_an_animated_avatar() {
        // Shaped after Discord's documented user object.
        let user = json!({
            "id": "80351110224678912",
            "username": "nelly",
            "discriminator": "0",
            "global_name": "Nelly 🌸",
            "avatar": "a_8342729096ea3675442027381ff50dfe",
            "verified": true,
            "email": "nelly@discord.com",
            "flags": 64,
            "banner": null,
            "accent_color": 16711680,
            "premium_type": 1,
            "public_flags": 64,
            "mfa_enabled": true,
            "locale": "en-US"
        });
        let guilds = json!([
            {"id": "80351110224678912", "name": "1337 Krew", "icon": null, "owner": true,
             "permissions": "36953089", "features": ["COMMUNITY"]},
            {"id": "197038439483310086", "name": "Discord Testers", "owner": false}
        ]);
        let profile = Harness::<Discord>::new()
            .map_profile(
                &Responses::new()
                    .ok("user", user)
                    .ok("guilds", guilds)
                    .fetch_groups(true)
                    .input(),
            )
            .unwrap();
        insta::assert_json_snapshot!(profile);
    }

    #[test]
    fn an_unverified_email_no_display_name_and_no_avatar() {
        let user = json!({
            "id": "613425648685547541",
            "username": "newbie",
            "global_name": null,
            "avatar": null,
            "verified": false,
            "email": "newbie@example.com"
        });
        let profile = Harness::<Discord>::new()
            .map_profile(&Responses::new().ok("user", user).input())
            .unwrap();
        insta::assert_json_snapshot!(profile);
    }

    #[test]
    fn a_phone_only_account_has_no_email() {
        let user = json!({"id": "1", "username": "phone", "verified": true, "email": null});
        let profile = Harness::<Discord>::new()
            .map_profile(&Responses::new().ok("user", user).input())
            .unwrap();
        assert_eq!((profile.email, profile.email_verified), (None, false));
    }

    #[test]
    fn guilds_are_asked_only_with_groups() {
        let discord = Harness::<Discord>::new();
        let endpoints = discord.configure(json!({})).unwrap();
        assert_eq!(
            endpoints.token_url.as_deref(),
            Some("https://discord.com/api/oauth2/token")
        );
        let requests = |fetch_groups| {
            discord
                .profile_requests(&ProfileRequestsInput {
                    endpoints: endpoints.clone(),
                    fetch_groups,
                    ..ProfileRequestsInput::default()
                })
                .unwrap()
        };
        assert_eq!(requests(false).len(), 1);
        assert_eq!(
            requests(true)[1].url,
            "https://discord.com/api/users/@me/guilds"
        );
        assert_eq!(discord.describe().group_scopes, ["guilds"]);
    }
}
