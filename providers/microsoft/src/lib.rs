//! Lanyard provider plugin for Microsoft Entra ID (work, school and personal Microsoft
//! accounts; OpenID Connect, v2.0 endpoints).
//!
//! - `tenant`: `common` (any organisation and personal accounts), `organizations`,
//!   `consumers`, or one tenant's id (a GUID; default `common`). A tenant's domain name is
//!   refused: its discovery document names the tenant by id, so the issuer could not be
//!   checked against it.
//! - Multi-tenant sign-in: the discovery document of `common` and `organizations` names the
//!   issuer `https://login.microsoftonline.com/{tenantid}/v2.0`. The daemon checks each ID
//!   token's `iss` against that issuer with the token's own `tid` in place, after verifying
//!   its signature; `allowed_tenants` then limits which tenants may sign in at all.
//! - Groups: the ID token's `groups` claim when the app registration emits it; otherwise,
//!   when a login asks for groups, Microsoft Graph `GET /me/memberOf` (needs the
//!   `GroupMember.Read.All` permission). Groups are object ids: display names are neither
//!   unique nor stable.
//!
//! **Email trust.** Entra ID's `email` claim is an attribute a tenant's administrators can
//! set to any address, so it proves nothing by itself. An email counts as verified only when
//! the token also carries `xms_edov: true` (the optional "email domain owner verified" claim:
//! the tenant has verified the address's domain), or when it comes from a personal Microsoft
//! account (tenant `9188040d-6c67-4c5b-b112-36a304b66dad`), whose addresses Microsoft has
//! verified. Add the `xms_edov` optional claim in the app registration to link work accounts
//! by email.

use lanyard_provider_sdk::{
    bool_field, export_provider, setting_list, setting_str, setting_url, str_field, string_list,
    AuthorizeInput, AuthorizeParams, CheckClaimsInput, ConfigField, ConfigureInput, Description,
    Endpoints, HttpRequest, MapProfileInput, Profile, ProfileRequestsInput, Protocol, Provider,
    ProviderError,
};
use serde_json::Value;

/// The Microsoft Entra ID provider.
#[derive(Debug, Default)]
pub struct Microsoft;

const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
const DEFAULT_GRAPH: &str = "https://graph.microsoft.com";
/// The tenant personal Microsoft accounts belong to.
pub const CONSUMERS_TENANT_ID: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";
const MULTI_TENANT: [&str; 3] = ["common", "organizations", "consumers"];

impl Provider for Microsoft {
    const KIND: &'static str = "microsoft";

    fn describe(&self) -> Description {
        Description {
            display_name: "Microsoft".into(),
            protocol: Protocol::Oidc,
            default_scopes: vec!["openid".into(), "email".into(), "profile".into()],
            group_scopes: vec!["GroupMember.Read.All".into()],
            pkce: true,
            config_fields: vec![
                ConfigField::optional(
                    "tenant",
                    "common (default), organizations, consumers, or a tenant id (GUID).",
                ),
                ConfigField::optional(
                    "allowed_tenants",
                    "Tenant ids whose users may sign in (the token's `tid`); any when absent.",
                ),
                ConfigField::optional(
                    "authority",
                    "The login host (default https://login.microsoftonline.com; national clouds differ).",
                ),
                ConfigField::optional(
                    "graph_url",
                    "Microsoft Graph (default https://graph.microsoft.com), for groups.",
                ),
            ],
            ..Description::default()
        }
    }

    fn configure(&self, input: &ConfigureInput) -> Result<Endpoints, ProviderError> {
        let settings = &input.settings;
        let tenant = setting_str(settings, "tenant").unwrap_or("common");
        if !MULTI_TENANT.contains(&tenant) && !is_guid(tenant) {
            return Err(ProviderError::invalid_config(format!(
                "`tenant` is common, organizations, consumers or a tenant id (a GUID, shown in \
                 the Entra admin centre), not `{tenant}`"
            )));
        }
        if let Some(value) = settings.get("allowed_tenants") {
            if !value.is_array() || setting_list(settings, "allowed_tenants").is_empty() {
                return Err(ProviderError::invalid_config(
                    "`allowed_tenants` is a non-empty list of tenant ids",
                ));
            }
        }
        let authority = setting_url(settings, "authority", DEFAULT_AUTHORITY)?;
        setting_url(settings, "graph_url", DEFAULT_GRAPH)?;
        let tenant_base = format!("{authority}/{tenant}/v2.0");
        let discovery = format!("{tenant_base}/.well-known/openid-configuration");
        let issuer = if MULTI_TENANT.contains(&tenant) {
            // Their discovery documents name the issuer with the placeholder; the daemon
            // checks each token's `iss` with its own `tid` in place.
            format!("{authority}/{{tenantid}}/v2.0")
        } else {
            tenant_base.clone()
        };
        Ok(Endpoints {
            issuer: Some(issuer),
            discovery_url: Some(discovery),
            ..Endpoints::default()
        })
    }

    fn authorize_params(&self, input: &AuthorizeInput) -> Result<AuthorizeParams, ProviderError> {
        let mut out = AuthorizeParams::default();
        if let Some(hint) = &input.login_hint {
            out.params.insert("login_hint".into(), hint.clone());
        }
        if let Some(prompt) = &input.prompt {
            out.params.insert("prompt".into(), prompt.clone());
        }
        Ok(out)
    }

    fn check_claims(&self, input: &CheckClaimsInput) -> Result<(), ProviderError> {
        let allowed = setting_list(&input.settings, "allowed_tenants");
        if allowed.is_empty() {
            return Ok(());
        }
        match str_field(&input.claims, "tid") {
            Some(tid) if allowed.iter().any(|t| t.eq_ignore_ascii_case(tid)) => Ok(()),
            Some(tid) => Err(ProviderError::invalid_claims(format!(
                "tenant `{tid}` is not allowed"
            ))),
            None => Err(ProviderError::invalid_claims(
                "the ID token names no tenant",
            )),
        }
    }

    fn profile_requests(
        &self,
        input: &ProfileRequestsInput,
    ) -> Result<Vec<HttpRequest>, ProviderError> {
        let claims_have_groups = input
            .claims
            .as_ref()
            .is_some_and(|c| c.get("groups").is_some());
        if !input.fetch_groups || claims_have_groups {
            return Ok(Vec::new());
        }
        let graph = setting_url(&input.settings, "graph_url", DEFAULT_GRAPH)?;
        Ok(vec![HttpRequest::get(
            "member_of",
            &format!("{graph}/v1.0/me/memberOf?$select=id&$top=999"),
        )
        .optional()])
    }

    fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
        let oidc = input.oidc()?;
        let (claims, subject) = (oidc.claims, oidc.subject);
        let email = str_field(claims, "email").map(str::to_owned);
        let personal = str_field(claims, "tid") == Some(CONSUMERS_TENANT_ID);
        let verified = bool_field(claims, "xms_edov") || personal;
        let groups = if !input.fetch_groups {
            Vec::new()
        } else if claims.get("groups").is_some() {
            string_list(claims, "groups")
        } else {
            input
                .optional_response("member_of")
                .and_then(|r| r.get("value"))
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        // Directory roles are members too; only groups are groups.
                        .filter(|i| {
                            i.get("@odata.type").and_then(Value::as_str)
                                != Some("#microsoft.graph.directoryRole")
                        })
                        .filter_map(|i| str_field(i, "id"))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let text = |name| str_field(claims, name).map(str::to_owned);
        Ok(Profile {
            subject: subject.to_owned(),
            email_verified: email.is_some() && verified,
            email,
            name: text("name"),
            username: text("preferred_username"),
            picture: None,
            groups,
            raw: claims.clone(),
        })
    }
}

/// `8-4-4-4-12` hexadecimal digits.
fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

export_provider!(Microsoft);

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_provider_sdk::testing::{settings_of, Harness, Responses};
    use serde_json::json;

    fn work_claims() -> Value {
        // Shaped after Microsoft's documented v2.0 ID token for a work account.
        json!({
            "ver": "2.0",
            "iss": "https://login.microsoftonline.com/9122040d-6c67-4c5b-b112-36a304b66dad/v2.0",
            "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
            "aud": "6cb04018-a3f5-46a7-b995-940c78f5aef3",
            "exp": 1536361411,
            "iat": 1536274711,
            "nbf": 1536274711,
            "name": "Abe Lincoln",
            "preferred_username": "AbeLi@microsoft.com",
            "oid": "00000000-0000-0000-66f3-3332eca7ea81",
            "tid": "9122040d-6c67-4c5b-b112-36a304b66dad",
            "email": "AbeLi@microsoft.com",
            "nonce": "123523",
            "aio": "Df2UVXL1ix!lMCWMSOJBcFatzcGfvFGhjKv8q5g0x732dR5MB5BisvGQO7YWByjd8iQDLq!eGbIDakyp5mnOrcdqHeYSnltepQmRp6AIZ8jY"
        })
    }

    #[test]
    fn a_work_account_email_is_not_trusted_without_xms_edov() {
        let profile = Harness::<Microsoft>::new()
            .map_profile(&Responses::new().claims(work_claims()).input())
            .unwrap();
        insta::assert_json_snapshot!(profile);
    }

    #[test]
    fn a_verified_domain_and_graph_groups() {
        let mut claims = work_claims();
        claims["xms_edov"] = json!(true);
        let member_of = json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects(id)",
            "value": [
                {"@odata.type": "#microsoft.graph.group", "id": "0f0f3b4c-7a0c-4f1f-8d9c-5e0a6e2c1a11"},
                {"@odata.type": "#microsoft.graph.directoryRole", "id": "8e1c2f5e-0000-0000-0000-000000000000"},
                {"@odata.type": "#microsoft.graph.group", "id": "c1d2e3f4-1111-2222-3333-444455556666"}
            ]
        });
        let profile = Harness::<Microsoft>::new()
            .map_profile(
                &Responses::new()
                    .claims(claims)
                    .ok("member_of", member_of)
                    .fetch_groups(true)
                    .input(),
            )
            .unwrap();
        insta::assert_json_snapshot!(profile);
    }

    #[test]
    fn a_personal_account_email_is_verified() {
        let claims = json!({
            "iss": format!("https://login.microsoftonline.com/{CONSUMERS_TENANT_ID}/v2.0"),
            "sub": "AAAAAAAAAAAAAAAAAAAAAFz6lY2VnFm8nIUF6Hr0ZGU",
            "tid": CONSUMERS_TENANT_ID,
            "email": "someone@outlook.com",
            "name": "Ünïcode Person",
        });
        let profile = Harness::<Microsoft>::new()
            .map_profile(&Responses::new().claims(claims).input())
            .unwrap();
        assert!(profile.email_verified);
        assert_eq!(profile.name.as_deref(), Some("Ünïcode Person"));
    }

    #[test]
    fn groups_from_the_token_win_and_graph_is_asked_only_otherwise() {
        let ms = Harness::<Microsoft>::new();
        let mut claims = work_claims();
        claims["groups"] = json!(["g-1", "g-2"]);
        let profile = ms
            .map_profile(
                &Responses::new()
                    .claims(claims.clone())
                    .fetch_groups(true)
                    .input(),
            )
            .unwrap();
        assert_eq!(profile.groups, ["g-1", "g-2"]);
        let requests = |claims: Value| {
            ms.profile_requests(&ProfileRequestsInput {
                claims: Some(claims),
                fetch_groups: true,
                ..ProfileRequestsInput::default()
            })
            .unwrap()
        };
        assert!(requests(claims).is_empty());
        let asked = requests(work_claims());
        assert_eq!(
            asked[0].url,
            "https://graph.microsoft.com/v1.0/me/memberOf?$select=id&$top=999"
        );
    }

    #[test]
    fn tenants_shape_the_issuer_and_allowed_tenants_are_enforced() {
        let ms = Harness::<Microsoft>::new();
        let common = ms.configure(json!({})).unwrap();
        assert_eq!(
            common.issuer.as_deref(),
            Some("https://login.microsoftonline.com/{tenantid}/v2.0")
        );
        assert_eq!(
            common.discovery_url.as_deref(),
            Some("https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration")
        );
        let single = ms
            .configure(json!({"tenant": "9122040d-6c67-4c5b-b112-36a304b66dad"}))
            .unwrap();
        assert_eq!(
            single.issuer.as_deref(),
            Some("https://login.microsoftonline.com/9122040d-6c67-4c5b-b112-36a304b66dad/v2.0")
        );
        assert!(ms.configure(json!({"tenant": "a/b"})).is_err());
        assert!(ms
            .configure(json!({"tenant": "contoso.onmicrosoft.com"}))
            .is_err());
        assert!(ms.configure(json!({"allowed_tenants": []})).is_err());

        let check = |claims: Value| {
            ms.check_claims(&CheckClaimsInput {
                settings: settings_of(
                    json!({"allowed_tenants": ["9122040d-6c67-4c5b-b112-36a304b66dad"]}),
                ),
                claims,
                ..CheckClaimsInput::default()
            })
        };
        assert!(check(work_claims()).is_ok());
        let mut other = work_claims();
        other["tid"] = json!("00000000-0000-0000-0000-000000000001");
        assert!(check(other).is_err());
    }
}
