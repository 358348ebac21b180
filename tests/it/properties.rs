//! Property tests (fuzzing that runs in CI): arbitrary provider JSON into every catalogue
//! plugin's `map_profile` and `profile_requests`, through the real ABI of the built `.so`
//! files (loaded as the daemon loads them). No plugin may panic.
//! `PROPTEST_CASES` raises the number of cases (RELIABILITY.md records a long run).

use std::sync::OnceLock;

use lanyard::providers::plugin::{CallError, Plugin};
use lanyard_provider_sdk::{MapProfileInput, Op, Profile, ProfileRequestsInput};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Field names the catalogue's plugins look for, so generated objects hit real code paths.
const KEYS: &[&str] = &[
    "sub",
    "id",
    "email",
    "email_verified",
    "name",
    "preferred_username",
    "nickname",
    "picture",
    "groups",
    "groups_direct",
    "hd",
    "tid",
    "xms_edov",
    "verified",
    "username",
    "global_name",
    "avatar",
    "uuid",
    "account_id",
    "display_name",
    "links",
    "avatar_url",
    "login",
    "values",
    "is_primary",
    "is_confirmed",
    "slug",
    "value",
    "@odata.type",
    "https://slack.com/team_id",
    "user_id",
    "mail",
    "mail_confirmed",
    "full_name",
    "primary",
    "organization",
    "data",
    "firstName",
    "lastName",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,24}".prop_map(Value::String),
        Just(json!("true")),
        Just(json!("")),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec(
                (prop::sample::select(KEYS).prop_map(str::to_owned), inner),
                0..10
            )
            .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn input() -> impl Strategy<Value = MapProfileInput> {
    (
        prop::option::of(json_value()),
        prop::collection::vec(
            (
                prop::sample::select(
                    &[
                        "user",
                        "emails",
                        "orgs",
                        "teams",
                        "userinfo",
                        "guilds",
                        "workspaces",
                        "member_of",
                        "me",
                    ][..],
                ),
                any::<u16>(),
                json_value(),
            ),
            0..5,
        ),
        json_value(),
        any::<bool>(),
        prop::option::of("\\PC{0,64}"),
    )
        .prop_map(|(claims, responses, settings, fetch_groups, user)| {
            let mut input = MapProfileInput {
                claims,
                fetch_groups,
                settings: match settings {
                    Value::Object(map) => map,
                    _ => Default::default(),
                },
                ..MapProfileInput::default()
            };
            for (name, status, body) in responses {
                input.responses.insert(
                    name.into(),
                    lanyard_provider_sdk::HttpResponse {
                        status: status % 600,
                        body,
                    },
                );
            }
            if let Some(user) = user {
                input.callback_params.insert("user".into(), user);
            }
            input
        })
}

const KINDS: &[&str] = &[
    "oidc",
    "github",
    "oauth2",
    "google",
    "microsoft",
    "gitlab",
    "slack",
    "discord",
    "bitbucket",
    "apple",
    "example",
];

fn plugins() -> &'static Vec<Plugin> {
    static PLUGINS: OnceLock<Vec<Plugin>> = OnceLock::new();
    PLUGINS.get_or_init(|| {
        let dir = lanyard_tests::harness::target_dir();
        KINDS
            .iter()
            .map(|kind| {
                let file = dir.join(format!(
                    "liblanyard_provider_{kind}.{}",
                    std::env::consts::DLL_EXTENSION
                ));
                Plugin::load(&file).unwrap_or_else(|e| panic!("{kind}: {e} (cargo build first)"))
            })
            .collect()
    })
}

/// Every plugin answers (a profile, requests, or a provider error) without panicking.
fn survives(input: &MapProfileInput) -> Result<(), TestCaseError> {
    for plugin in plugins() {
        let mapped = plugin.call::<_, Profile>(Op::MapProfile, input);
        let requested = plugin.call::<_, Vec<lanyard_provider_sdk::HttpRequest>>(
            Op::ProfileRequests,
            &ProfileRequestsInput {
                settings: input.settings.clone(),
                claims: input.claims.clone(),
                fetch_groups: input.fetch_groups,
                ..ProfileRequestsInput::default()
            },
        );
        for outcome in [mapped.map(|_| ()), requested.map(|_| ())] {
            if let Err(error @ (CallError::Panicked { .. } | CallError::BadOutput { .. })) = outcome
            {
                return Err(TestCaseError::fail(format!("{}: {error}", plugin.kind())));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn no_plugin_panics_on_any_provider_json(input in input()) {
        survives(&input)?;
    }
}

/// The wire codes a request can be answered with (docs/protocol.md); `internal` is not among
/// them: arbitrary input must never reach a failure the daemon did not foresee.
const EXPECTED_CODES: &[&str] = &[
    "bad_request",
    "payload_too_large",
    "unknown_provider",
    "invalid_state",
    "access_denied",
    "provider_error",
    "provider_unavailable",
    "invalid_id_token",
    "account_exists",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "rate_limited",
    "reauth_required",
];

const COMMANDS: &[&str] = &[
    "login",
    "callback",
    "jwks",
    "session.verify",
    "session.refresh",
    "session.revoke",
    "user.get",
    "token.get",
    "identity.unlink",
    "admin.provider.create",
    "admin.provider.update",
    "admin.provider.patch",
    "admin.provider.delete",
    "admin.provider.get",
    "admin.status",
];

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(
            (
                prop::sample::select(
                    &[
                        "provider",
                        "state",
                        "code",
                        "query",
                        "iss",
                        "token",
                        "refresh_token",
                        "user_id",
                        "id",
                        "kind",
                        "client_id",
                        "redirect_uris",
                        "login_hint",
                        "scopes",
                        "redirect_uri",
                        "return_to",
                        "link_session",
                        "prompt",
                        "binding",
                    ][..]
                ),
                json_value(),
            ),
            0..6,
        )
        .prop_map(|fields| {
            Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                .to_string()
                .into_bytes()
        }),
    ]
}

/// Arbitrary bytes to every command, through NATS: each answer is success or an error
/// envelope with a documented code, in both body and header, and the daemon keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers_arbitrary_bytes_with_a_documented_code() {
    use proptest::test_runner::{Config, TestRunner};
    let t = lanyard_tests::TestDaemon::start().await;
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64u32);
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config::with_cases(cases));
    runner
        .run(
            &(prop::sample::select(COMMANDS), payload()),
            |(command, bytes)| {
                let reply = tokio::task::block_in_place(|| {
                    handle.block_on(t.request_raw(command, bytes.into()))
                });
                if let Some(error) = reply.body.get("error") {
                    let code = error["code"].as_str().unwrap_or_default();
                    prop_assert!(EXPECTED_CODES.contains(&code), "{command}: {}", reply.body);
                    prop_assert_eq!(reply.error_header.as_deref(), Some(code));
                }
                Ok(())
            },
        )
        .unwrap();
    t.full_login(json!({ "provider": "oidc" })).await.ok();
}
