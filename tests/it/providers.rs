//! The provider catalogue end to end: each plugin logs a user in through NATS against the
//! fake provider configured to behave like the real one (its endpoints, claim shapes and
//! quirks).

use lanyard_tests::harness::{CLIENT_ID, CLIENT_SECRET};
use lanyard_tests::TestDaemon;
use serde_json::json;

/// A provider instance of `kind` with the test client's credentials and `settings` (TOML).
fn instance(id: &str, kind: &str, settings: &str) -> String {
    format!(
        r#"
[[providers]]
id = "{id}"
kind = "{kind}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
redirect_uris = ["http://app.test/callback/{id}"]
{settings}
"#
    )
}

#[tokio::test]
async fn generic_oauth2_logs_in_from_config_alone() {
    let t = TestDaemon::start_plus(|base| {
        instance(
            "acme",
            "oauth2",
            &format!(
                r#"scopes = ["profile", "email"]
authorization_url = "{base}/authorize"
token_url = "{base}/token"
userinfo_url = "{base}/acme/v1/me"
token_auth = "body"
subject_pointer = "/data/id"
email_pointer = "/data/email"
email_verified_pointer = "/data/email_confirmed"
name_pointer = "/data/display_name"
username_pointer = "/data/handle"
groups_pointer = "/data/teams"
group_name_pointer = "/slug"
"#
            ),
        )
    })
    .await;
    t.idp.set(|k| {
        k.routes.insert(
            "/acme/v1/me".into(),
            json!({"data": {
                "id": 4242,
                "email": "zoe@acme.test",
                "email_confirmed": true,
                "display_name": "Zoë",
                "handle": "zoe",
                "teams": [{"slug": "platform"}],
            }}),
        );
    });
    let login = t.begin(json!({ "provider": "acme" })).await;
    let url = url::Url::parse(login.reply["authorization_url"].as_str().unwrap()).unwrap();
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(param("scope").as_deref(), Some("profile email"));
    assert_eq!(param("code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(param("nonce"), None, "no nonce for plain OAuth2");
    let body = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "acme" })),
        )
        .await
        .ok()
        .clone();
    assert_eq!(body["identity"]["provider"], "acme");
    assert_eq!(body["identity"]["subject"], "4242");
    assert_eq!(body["identity"]["groups"], json!(["platform"]));
    assert_eq!(body["user"]["email"], "zoe@acme.test");
    assert_eq!(body["user"]["email_verified"], true);
    assert_eq!(body["user"]["name"], "Zoë");
}

/// The value of query parameter `name` in `url`.
fn param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn google(hd: Option<&str>) -> (TestDaemon, lanyard_tests::harness::Reply, String) {
    let t = TestDaemon::start_plus(|base| {
        instance(
            "google",
            "google",
            &format!(
                "issuer = \"{base}\"\nhosted_domains = [\"example.test\"]\noffline_access = true\n"
            ),
        )
    })
    .await;
    if let Some(hd) = hd {
        let hd = hd.to_owned();
        t.idp.set(move |k| {
            k.extra_claims.insert("hd".into(), json!(hd));
        });
    }
    let login = t
        .begin(json!({ "provider": "google", "login_hint": "ada@example.test" }))
        .await;
    let url = login.reply["authorization_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "google" })),
        )
        .await;
    (t, reply, url)
}

#[tokio::test]
async fn google_workspace_user_of_an_allowed_domain_logs_in_with_offline_access() {
    let (_t, reply, url) = google(Some("example.test")).await;
    assert_eq!(param(&url, "access_type").as_deref(), Some("offline"));
    assert_eq!(param(&url, "prompt").as_deref(), Some("consent"));
    assert_eq!(param(&url, "hd").as_deref(), Some("example.test"));
    assert!(param(&url, "nonce").is_some());
    let body = reply.ok();
    assert_eq!(body["identity"]["provider"], "google");
    assert_eq!(body["user"]["email"], "ada@example.test");
    assert_eq!(body["user"]["email_verified"], true);
}

#[tokio::test]
async fn google_users_outside_the_hosted_domains_are_refused() {
    let (_t, reply, _) = google(Some("elsewhere.test")).await;
    assert_eq!(reply.code(), "invalid_id_token");
    let (_t, reply, _) = google(None).await;
    assert_eq!(reply.code(), "invalid_id_token", "a personal account");
}

#[tokio::test]
async fn gitlab_self_managed_with_groups_from_the_id_token() {
    let t = TestDaemon::start_plus(|base| {
        instance("gitlab", "gitlab", &format!("base_url = \"{base}\"\n"))
    })
    .await;
    t.idp.set(|k| {
        k.extra_claims.insert("nickname".into(), json!("ada"));
        k.extra_claims
            .insert("groups_direct".into(), json!(["acme", "acme/platform"]));
    });
    let login = t
        .begin(
            json!({ "provider": "gitlab", "fetch_groups": true, "login_hint": "ada@example.test" }),
        )
        .await;
    let body = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "gitlab" })),
        )
        .await
        .ok()
        .clone();
    assert_eq!(body["identity"]["provider"], "gitlab");
    assert_eq!(body["identity"]["groups"], json!(["acme", "acme/platform"]));
    assert_eq!(body["user"]["username"], "ada");
    assert_eq!(body["user"]["email_verified"], true);
}

#[tokio::test]
async fn discord_login_with_guilds() {
    let t = TestDaemon::start_plus(|base| {
        instance("discord", "discord", &format!("base_url = \"{base}\"\n"))
    })
    .await;
    t.idp.set(|k| {
        k.routes.insert(
            "/api/users/@me".into(),
            json!({"id": "80351110224678912", "username": "nelly", "global_name": "Nelly",
                   "avatar": "8342729096ea3675442027381ff50dfe", "verified": true,
                   "email": "nelly@example.test"}),
        );
        k.routes.insert(
            "/api/users/@me/guilds".into(),
            json!([{"id": "197038439483310086", "name": "Testers"}]),
        );
    });
    let login = t
        .begin(json!({ "provider": "discord", "fetch_groups": true }))
        .await;
    let url = login.reply["authorization_url"].as_str().unwrap();
    assert_eq!(
        param(url, "scope").as_deref(),
        Some("identify email guilds")
    );
    let body = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "discord" })),
        )
        .await
        .ok()
        .clone();
    assert_eq!(body["identity"]["subject"], "80351110224678912");
    assert_eq!(
        body["identity"]["groups"],
        json!(["guild:197038439483310086"])
    );
    assert_eq!(body["user"]["email"], "nelly@example.test");
    assert_eq!(body["user"]["email_verified"], true);
    assert_eq!(body["user"]["username"], "nelly");
}

#[tokio::test]
async fn slack_member_of_an_allowed_workspace_logs_in() {
    let t = TestDaemon::start_plus(|base| {
        instance(
            "slack",
            "slack",
            &format!("issuer = \"{base}\"\nteam_ids = [\"T0R7GR\"]\n"),
        )
    })
    .await;
    t.idp.set(|k| {
        k.extra_claims
            .insert("https://slack.com/team_id".into(), json!("T0R7GR"));
    });
    let login = t
        .begin(json!({ "provider": "slack", "fetch_groups": true }))
        .await;
    assert_eq!(
        param(login.reply["authorization_url"].as_str().unwrap(), "team").as_deref(),
        Some("T0R7GR")
    );
    let body = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "slack" })),
        )
        .await
        .ok()
        .clone();
    assert_eq!(body["identity"]["groups"], json!(["team:T0R7GR"]));
    assert_eq!(body["user"]["email"], "ada@example.test");

    t.idp.set(|k| {
        k.extra_claims
            .insert("https://slack.com/team_id".into(), json!("T-OTHER"));
    });
    let login = t.begin(json!({ "provider": "slack" })).await;
    let reply = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "slack" })),
        )
        .await;
    assert_eq!(reply.code(), "invalid_id_token");
}

#[tokio::test]
async fn bitbucket_login_uses_the_confirmed_primary_email() {
    let t = TestDaemon::start_plus(|base| {
        instance(
            "bitbucket",
            "bitbucket",
            &format!("base_url = \"{base}\"\napi_url = \"{base}\"\n"),
        )
    })
    .await;
    t.idp.set(|k| {
        k.routes.insert(
            "/2.0/user".into(),
            json!({"uuid": "{d301aafa-d676-4ee0-88be-962be7417567}", "nickname": "evzijst",
                   "display_name": "Erik van Zijst"}),
        );
        k.routes.insert(
            "/2.0/user/emails".into(),
            json!({"values": [
                {"email": "old@example.test", "is_primary": false, "is_confirmed": true},
                {"email": "erik@example.test", "is_primary": true, "is_confirmed": true}
            ]}),
        );
        k.routes.insert(
            "/2.0/workspaces".into(),
            json!({"values": [{"slug": "atlassian"}]}),
        );
    });
    let login = t
        .begin(json!({ "provider": "bitbucket", "fetch_groups": true }))
        .await;
    let body = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "bitbucket" })),
        )
        .await
        .ok()
        .clone();
    assert_eq!(
        body["identity"]["subject"],
        "{d301aafa-d676-4ee0-88be-962be7417567}"
    );
    assert_eq!(body["user"]["email"], "erik@example.test");
    assert_eq!(body["user"]["email_verified"], true);
    assert_eq!(body["identity"]["groups"], json!(["atlassian"]));
}

/// The tutorial plugin (`providers/example`) is built with the workspace and loads like any
/// other: a plugin written by following the guide works end to end.
#[tokio::test]
async fn the_example_plugin_loads_and_logs_in() {
    let t = TestDaemon::start_plus(|base| {
        instance("example", "example", &format!("base_url = \"{base}\"\n"))
    })
    .await;
    t.idp.set(|k| {
        k.routes.insert(
            "/example/me".into(),
            json!({"user_id": 42, "mail": "ada@example.test", "mail_confirmed": true,
                   "full_name": "Ada Lovelace"}),
        );
    });
    let login = t.begin(json!({ "provider": "example" })).await;
    let body = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "example" })),
        )
        .await
        .ok()
        .clone();
    assert_eq!(body["identity"]["provider"], "example");
    assert_eq!(body["identity"]["subject"], "42");
    assert_eq!(body["user"]["name"], "Ada Lovelace");
    assert_eq!(body["user"]["email_verified"], true);
}

const TENANT: &str = "9122040d-6c67-4c5b-b112-36a304b66dad";
const OTHER_TENANT: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";

/// A daemon with a multi-tenant (`common`) Microsoft instance allowing [`TENANT`], against a
/// fake provider that publishes `common`'s templated issuer and signs tokens as tenant
/// `signing_tenant` with `tid` claim `tid`.
async fn microsoft(tid: &str, signing_tenant: &str) -> TestDaemon {
    let t = TestDaemon::start_plus(|base| {
        instance(
            "entra",
            "microsoft",
            &format!(
                "tenant = \"common\"\nallowed_tenants = [\"{TENANT}\"]\nauthority = \"{base}\"\ngraph_url = \"{base}\"\n"
            ),
        )
    })
    .await;
    let base = t.idp.issuer();
    let (tid, signing_tenant) = (tid.to_owned(), signing_tenant.to_owned());
    t.idp.set(move |k| {
        let mut doc = lanyard_tests::idp::discovery_document(&base);
        doc["issuer"] = json!(format!("{base}/{{tenantid}}/v2.0"));
        k.public_routes
            .insert("/common/v2.0/.well-known/openid-configuration".into(), doc);
        k.issuer_override = Some(format!("{base}/{signing_tenant}/v2.0"));
        k.extra_claims.insert("tid".into(), json!(tid));
        k.extra_claims.insert("xms_edov".into(), json!(true));
        k.routes.insert(
            "/v1.0/me/memberOf".into(),
            json!({"value": [{"@odata.type": "#microsoft.graph.group", "id": "g-1"}]}),
        );
    });
    t
}

#[tokio::test]
async fn microsoft_multi_tenant_checks_the_issuer_against_the_tokens_tenant() {
    let t = microsoft(TENANT, TENANT).await;
    let login = t
        .begin(json!({ "provider": "entra", "fetch_groups": true }))
        .await;
    let body = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "entra" })),
        )
        .await
        .ok()
        .clone();
    assert_eq!(body["identity"]["groups"], json!(["g-1"]));
    assert_eq!(body["user"]["email_verified"], true, "xms_edov vouches");

    // A token whose `iss` names another tenant than its `tid`. (The callback's own `iss`
    // can only be checked against the template: the tenant is known from the token.)
    let t = microsoft(TENANT, OTHER_TENANT).await;
    let login = t.begin(json!({ "provider": "entra" })).await;
    let reply = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "entra" })),
        )
        .await;
    assert_eq!(
        reply.code(),
        "invalid_id_token",
        "iss must match the token's tid"
    );

    // A consistent token from a tenant not in `allowed_tenants`.
    let t = microsoft(OTHER_TENANT, OTHER_TENANT).await;
    let login = t.begin(json!({ "provider": "entra" })).await;
    let reply = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "entra" })),
        )
        .await;
    assert_eq!(reply.code(), "invalid_id_token");
}

/// Sign in with Apple: the daemon signs the client secret as an ES256 JWT from the
/// configured key (the fake checks it as Apple does), the result comes back as a
/// form_post body passed as `query`, and the name arrives only with the first login.
#[tokio::test]
async fn apple_signs_its_client_secret_and_takes_the_first_login_name() {
    let key_file = concat!(env!("CARGO_MANIFEST_DIR"), "/keys/ec1.pem");
    let t = TestDaemon::start_with(|config| {
        let base = config
            .lines()
            .find_map(|l| l.strip_prefix("issuer = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap()
            .to_owned();
        config.push_str(&format!(
            r#"
[[providers]]
id = "apple"
kind = "apple"
client_id = "{CLIENT_ID}"
client_secret_file = "{key_file}"
redirect_uris = ["http://app.test/callback/apple"]
allowed_algs = ["RS256", "ES256"]
issuer = "{base}"
team_id = "ABCDE12345"
key_id = "KEY1234567"
"#
        ));
    })
    .await;
    t.idp.set(|k| {
        k.client_secret_jwt = Some(("ABCDE12345".into(), "KEY1234567".into()));
    });
    let login = t.begin(json!({ "provider": "apple" })).await;
    assert_eq!(
        param(
            login.reply["authorization_url"].as_str().unwrap(),
            "response_mode"
        )
        .as_deref(),
        Some("form_post")
    );
    // Apple POSTs `code`, `state` and, the first time only, `user`.
    let user = url::form_urlencoded::byte_serialize(
        br#"{"name":{"firstName":"Zo\u00eb","lastName":"Lovelace"},"email":"zoe@example.test"}"#,
    )
    .collect::<String>();
    let form = format!("{}&user={user}", login.query);
    let body = t
        .request(
            "callback",
            login.callback_with(json!({ "query": form, "provider": "apple" })),
        )
        .await
        .ok()
        .clone();
    assert_eq!(body["user"]["name"], "Zoë Lovelace");
    // The email is the ID token's (the fake's default user), never the form's.
    assert_eq!(body["user"]["email"], "ada@example.test");

    // A later login carries no name; the user keeps the first one.
    let login = t.begin(json!({ "provider": "apple" })).await;
    let again = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "apple" })),
        )
        .await
        .ok()
        .clone();
    assert_eq!(again["user"]["id"], body["user"]["id"]);
    assert_eq!(again["user"]["name"], "Zoë Lovelace");

    // The fake refuses a secret that is not a JWT signed with the configured key.
    t.idp.set(|k| {
        k.client_secret_jwt = Some(("OTHERTEAM1".into(), "KEY1234567".into()));
    });
    let login = t.begin(json!({ "provider": "apple" })).await;
    let refused = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "apple" })),
        )
        .await;
    assert_ne!(refused.body.get("error"), None, "{}", refused.body);
}
