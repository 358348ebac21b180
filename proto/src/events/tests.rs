//! Each event's body, pinned byte for byte.

use super::*;
use serde_json::{json, Value};

const ID: &str = "evt_01JD8Z6Q4W6V6QX3N7K2M9T5RB";
const AT: &str = "2026-11-22T05:47:58Z";

/// `event` serialises to exactly `body`'s bytes, and reads back from them. `json!`
/// builds a sorted map, which is how the daemon built bodies before this crate: equal
/// strings mean the bytes on the wire are unchanged.
fn assert_pinned(event: Event, body: Value) {
    let envelope = EventEnvelope {
        event_id: ID.into(),
        occurred_at: AT.into(),
        event,
    };
    assert_eq!(serde_json::to_string(&envelope).unwrap(), body.to_string());
    assert_eq!(
        serde_json::from_value::<EventEnvelope>(body).unwrap(),
        envelope
    );
}

#[test]
fn user_created() {
    assert_pinned(
        Event::UserCreated {
            user_id: "usr_1".into(),
            provider: "github".into(),
            subject: "583231".into(),
        },
        json!({ "event_id": ID, "type": "user.created", "occurred_at": AT,
                "user_id": "usr_1", "provider": "github", "subject": "583231" }),
    );
}

#[test]
fn identity_linked() {
    assert_pinned(
        Event::IdentityLinked {
            user_id: "usr_1".into(),
            provider: "github".into(),
            subject: "583231".into(),
        },
        json!({ "event_id": ID, "type": "identity.linked", "occurred_at": AT,
                "user_id": "usr_1", "provider": "github", "subject": "583231" }),
    );
}

#[test]
fn user_logged_in() {
    assert_pinned(
        Event::UserLoggedIn {
            user_id: "usr_1".into(),
            provider: "github".into(),
            subject: "583231".into(),
            new_user: true,
            session_id: "fam_1".into(),
        },
        json!({ "event_id": ID, "type": "user.logged_in", "occurred_at": AT,
                "user_id": "usr_1", "provider": "github", "subject": "583231",
                "new_user": true, "session_id": "fam_1" }),
    );
}

#[test]
fn login_failed_with_and_without_its_provider() {
    assert_pinned(
        Event::LoginFailed {
            code: ErrorCode::InvalidState,
            provider: Some("github".into()),
        },
        json!({ "event_id": ID, "type": "login.failed", "occurred_at": AT,
                "code": "invalid_state", "provider": "github" }),
    );
    // An unknown provider is left out, not `null`.
    assert_pinned(
        Event::LoginFailed {
            code: ErrorCode::InvalidState,
            provider: None,
        },
        json!({ "event_id": ID, "type": "login.failed", "occurred_at": AT,
                "code": "invalid_state" }),
    );
}

#[test]
fn session_revoked_for_each_reason() {
    assert_pinned(
        Event::SessionRevoked {
            user_id: "usr_1".into(),
            session_id: "fam_1".into(),
            reason: RevokeReason::Logout,
        },
        json!({ "event_id": ID, "type": "session.revoked", "occurred_at": AT,
                "user_id": "usr_1", "session_id": "fam_1", "reason": "logout" }),
    );
    assert_pinned(
        Event::SessionRevoked {
            user_id: "usr_1".into(),
            session_id: "fam_1".into(),
            reason: RevokeReason::RefreshTokenReused,
        },
        json!({ "event_id": ID, "type": "session.revoked", "occurred_at": AT,
                "user_id": "usr_1", "session_id": "fam_1",
                "reason": "refresh_token_reused" }),
    );
    for (reason, wire) in [
        (RevokeReason::Revoked, "revoked"),
        (RevokeReason::LogoutEverywhere, "logout_everywhere"),
        (RevokeReason::UserDeleted, "user_deleted"),
    ] {
        assert_pinned(
            Event::SessionRevoked {
                user_id: "usr_1".into(),
                session_id: "fam_1".into(),
                reason,
            },
            json!({ "event_id": ID, "type": "session.revoked", "occurred_at": AT,
                    "user_id": "usr_1", "session_id": "fam_1", "reason": wire }),
        );
    }
}

#[test]
fn provider_created() {
    assert_pinned(
        Event::ProviderCreated {
            provider: "acme".into(),
            kind: "oidc".into(),
            version: 1,
        },
        json!({ "event_id": ID, "type": "provider.created", "occurred_at": AT,
                "provider": "acme", "kind": "oidc", "version": 1 }),
    );
}

#[test]
fn provider_updated() {
    assert_pinned(
        Event::ProviderUpdated {
            provider: "acme".into(),
            kind: "oidc".into(),
            version: 2,
        },
        json!({ "event_id": ID, "type": "provider.updated", "occurred_at": AT,
                "provider": "acme", "kind": "oidc", "version": 2 }),
    );
}

#[test]
fn provider_deleted() {
    assert_pinned(
        Event::ProviderDeleted {
            provider: "acme".into(),
            kind: "oidc".into(),
            version: 3,
        },
        json!({ "event_id": ID, "type": "provider.deleted", "occurred_at": AT,
                "provider": "acme", "kind": "oidc", "version": 3 }),
    );
}

#[test]
fn token_refreshed() {
    assert_pinned(
        Event::TokenRefreshed {
            user_id: "usr_1".into(),
            provider: "github".into(),
        },
        json!({ "event_id": ID, "type": "token.refreshed", "occurred_at": AT,
                "user_id": "usr_1", "provider": "github" }),
    );
}

#[test]
fn token_refresh_failed() {
    assert_pinned(
        Event::TokenRefreshFailed {
            user_id: "usr_1".into(),
            provider: "github".into(),
            code: ErrorCode::ReauthRequired,
        },
        json!({ "event_id": ID, "type": "token.refresh_failed", "occurred_at": AT,
                "user_id": "usr_1", "provider": "github", "code": "reauth_required" }),
    );
}

#[test]
fn identity_unlinked() {
    assert_pinned(
        Event::IdentityUnlinked {
            user_id: "usr_1".into(),
            provider: "github".into(),
            subject: "583231".into(),
        },
        json!({ "event_id": ID, "type": "identity.unlinked", "occurred_at": AT,
                "user_id": "usr_1", "provider": "github", "subject": "583231" }),
    );
}

#[test]
fn user_updated_names_the_fields_not_their_values() {
    assert_pinned(
        Event::UserUpdated {
            user_id: "usr_1".into(),
            provider: "github".into(),
            subject: "583231".into(),
            changed: vec!["name".into(), "identity.groups".into()],
        },
        json!({ "event_id": ID, "type": "user.updated", "occurred_at": AT,
                "changed": ["name", "identity.groups"],
                "user_id": "usr_1", "provider": "github", "subject": "583231" }),
    );
}

#[test]
fn nats_callout_decisions() {
    assert_pinned(
        Event::NatsAuthorized {
            user_id: Some("usr_1".into()),
            session_id: Some("ses_1".into()),
            caller: None,
        },
        json!({ "event_id": ID, "type": "nats.authorized", "occurred_at": AT,
                "user_id": "usr_1", "session_id": "ses_1" }),
    );
    assert_pinned(
        Event::NatsAuthorized {
            user_id: None,
            session_id: None,
            caller: Some("billing".into()),
        },
        json!({ "event_id": ID, "type": "nats.authorized", "occurred_at": AT,
                "caller": "billing" }),
    );
    assert_pinned(
        Event::NatsRefused {
            code: ErrorCode::Unauthorized,
        },
        json!({ "event_id": ID, "type": "nats.refused", "occurred_at": AT,
                "code": "unauthorized" }),
    );
}

#[test]
fn user_deleted_carries_the_id_only() {
    assert_pinned(
        Event::UserDeleted {
            user_id: "usr_1".into(),
        },
        json!({ "event_id": ID, "type": "user.deleted", "occurred_at": AT, "user_id": "usr_1" }),
    );
}

#[test]
fn keys_rotated_names_the_new_key() {
    assert_pinned(
        Event::KeysRotated { kid: "k2".into() },
        json!({ "event_id": ID, "type": "keys.rotated", "occurred_at": AT, "kid": "k2" }),
    );
}

#[test]
fn the_exact_bytes_of_a_body() {
    let envelope = EventEnvelope {
        event_id: ID.into(),
        occurred_at: AT.into(),
        event: Event::UserLoggedIn {
            user_id: "usr_1".into(),
            provider: "github".into(),
            subject: "583231".into(),
            new_user: false,
            session_id: "fam_1".into(),
        },
    };
    assert_eq!(
        serde_json::to_string(&envelope).unwrap(),
        concat!(
            r#"{"event_id":"evt_01JD8Z6Q4W6V6QX3N7K2M9T5RB","new_user":false,"#,
            r#""occurred_at":"2026-11-22T05:47:58Z","provider":"github","#,
            r#""session_id":"fam_1","subject":"583231","type":"user.logged_in","#,
            r#""user_id":"usr_1"}"#
        )
    );
}

#[test]
fn reading_ignores_extra_fields_and_refuses_what_it_cannot_type() {
    let read = |body: Value| serde_json::from_value::<EventEnvelope>(body);
    let extra = read(
        json!({ "event_id": ID, "type": "token.refreshed", "occurred_at": AT,
                             "user_id": "usr_1", "provider": "github", "added_later": 1 }),
    );
    assert_eq!(
        extra.unwrap().event,
        Event::TokenRefreshed {
            user_id: "usr_1".into(),
            provider: "github".into()
        }
    );
    let missing = read(
        json!({ "event_id": ID, "type": "user.created", "occurred_at": AT,
                               "user_id": "usr_1", "provider": "github" }),
    );
    assert!(missing.unwrap_err().to_string().contains("lacks `subject`"));
    let unknown = read(json!({ "event_id": ID, "type": "user.renamed", "occurred_at": AT }));
    assert!(unknown
        .unwrap_err()
        .to_string()
        .contains("unknown event type"));
}

#[test]
fn subjects_end_with_the_name() {
    let event = Event::TokenRefreshed {
        user_id: "usr_1".into(),
        provider: "github".into(),
    };
    assert_eq!(event.subject("lanyard"), "lanyard.events.token.refreshed");
    let subject = event_subject("lanyard", Event::USER_LOGGED_IN);
    assert_eq!(subject, "lanyard.events.user.logged_in");
    assert_eq!(event_name("lanyard", &subject), Some("user.logged_in"));
    assert_eq!(event_name("other", &subject), None);
    assert_eq!(event_name("lanyard", "lanyard.v1.login"), None);
    assert_eq!(all_events_subject("acme"), "acme.events.>");
}
