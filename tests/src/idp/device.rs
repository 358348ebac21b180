//! The fake provider's device authorization grant (RFC 8628): the device authorization
//! endpoint, the device-code grant at the token endpoint (with `authorization_pending`,
//! `slow_down` for a poll sooner than the interval, `access_denied` and `expired_token`), and
//! the page where a user enters the code.

use std::time::{Duration, Instant};

use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::oauth::{issue_tokens, oauth_error};
use super::*;

/// One device code the fake issued.
#[derive(Debug, Clone)]
pub(super) struct DeviceGrant {
    user_code: String,
    client_id: String,
    scope: String,
    expires: Instant,
    /// The interval polls must keep, grown by 5 s at each `slow_down`.
    interval: Duration,
    last_poll: Instant,
    answer: Answer,
}

#[derive(Debug, Clone)]
enum Answer {
    Pending,
    Approved(TestUser),
    Denied,
}

/// What the device endpoints counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounts {
    /// Device-code grants at the token endpoint.
    pub polls: u64,
    /// Polls that came sooner than the interval asked (each answered `slow_down`).
    pub too_early: u64,
}

#[derive(Debug, Deserialize)]
pub(super) struct DeviceForm {
    client_id: Option<String>,
    #[serde(default)]
    scope: String,
}

pub(super) async fn device_authorization(
    State(state): State<Shared>,
    headers: axum::http::HeaderMap,
    Form(form): Form<DeviceForm>,
) -> Response {
    delay(&state).await;
    let mut inner = lock(&state);
    let client_id = super::oauth::basic_auth(&headers)
        .map(|(id, _)| id)
        .or(form.client_id)
        .unwrap_or_default();
    if client_id != inner.client_id {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    inner.counter += 1;
    let user_code = format!("WDJB-{:04}", inner.counter % 10_000);
    let device_code = format!("dc-{}", random());
    inner.device_codes.push(device_code.clone());
    let interval = inner.knobs.device_interval_secs.unwrap_or(1);
    let expires_in = inner.knobs.device_expires_in.unwrap_or(900);
    let now = Instant::now();
    inner.devices.insert(
        device_code.clone(),
        DeviceGrant {
            user_code: user_code.clone(),
            client_id,
            scope: form.scope,
            expires: now + Duration::from_secs(expires_in),
            interval: Duration::from_secs(interval),
            last_poll: now,
            answer: Answer::Pending,
        },
    );
    let base = inner.issuer.clone();
    Json(json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": format!("{base}/device"),
        "verification_uri_complete": format!("{base}/device?user_code={user_code}"),
        "expires_in": expires_in,
        "interval": interval,
    }))
    .into_response()
}

/// The device-code grant, after the token endpoint authenticated the client.
pub(super) fn device_grant(inner: &mut Inner, client_id: &str, device_code: &str) -> Response {
    inner.device_counts.polls += 1;
    let slow_down_first = std::mem::take(&mut inner.knobs.device_slow_down_once);
    let Some(grant) = inner.devices.get_mut(device_code) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    if grant.client_id != client_id {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let now = Instant::now();
    if now > grant.expires {
        return oauth_error(StatusCode::BAD_REQUEST, "expired_token");
    }
    let early = now.duration_since(grant.last_poll) < grant.interval;
    grant.last_poll = now;
    if early || slow_down_first {
        grant.interval += Duration::from_secs(5);
        if early {
            inner.device_counts.too_early += 1;
        }
        return oauth_error(StatusCode::BAD_REQUEST, "slow_down");
    }
    match grant.answer.clone() {
        Answer::Pending => oauth_error(StatusCode::BAD_REQUEST, "authorization_pending"),
        Answer::Denied => {
            inner.devices.remove(device_code);
            oauth_error(StatusCode::BAD_REQUEST, "access_denied")
        }
        Answer::Approved(user) => {
            let scope = grant.scope.clone();
            let client_id = grant.client_id.clone();
            inner.devices.remove(device_code);
            issue_tokens(inner, &client_id, user, scope, None)
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct DevicePage {
    user_code: Option<String>,
}

/// Where the user enters the code: a form, and with `user_code` the approval (as the
/// provider's default user), the way a user who is signed in at the provider approves.
pub(super) async fn device_page(
    State(state): State<Shared>,
    Query(query): Query<DevicePage>,
) -> Response {
    let Some(code) = query.user_code else {
        return Html(
            "<!doctype html><title>Fake IdP: device</title><h1>Connect a device</h1>\
             <form><label>Code <input name=user_code autofocus></label> \
             <button>Continue</button></form>",
        )
        .into_response();
    };
    let user = lock(&state).default_user.clone();
    if answer(&state, &code, Answer::Approved(user)) {
        Html(
            "<!doctype html><title>Fake IdP: device</title><h1>Device connected</h1>\
             <p>You can return to your device.</p>",
        )
        .into_response()
    } else {
        (StatusCode::NOT_FOUND, "no such code").into_response()
    }
}

/// Answers the pending device grant with `user_code`; false when there is none.
fn answer(state: &Shared, user_code: &str, answer: Answer) -> bool {
    let mut inner = lock(state);
    let grant = inner
        .devices
        .values_mut()
        .find(|g| g.user_code == user_code && matches!(g.answer, Answer::Pending));
    match grant {
        Some(grant) => {
            grant.answer = answer;
            true
        }
        None => false,
    }
}

impl FakeIdp {
    /// The user approves the device login showing `user_code`, as `user`.
    pub fn approve_device(&self, user_code: &str, user: TestUser) -> bool {
        answer(&self.inner, user_code, Answer::Approved(user))
    }

    /// The user refuses the device login showing `user_code`.
    pub fn deny_device(&self, user_code: &str) -> bool {
        answer(&self.inner, user_code, Answer::Denied)
    }

    /// Every device code issued so far (for scanning files for them).
    pub fn device_codes(&self) -> Vec<String> {
        lock(&self.inner).device_codes.clone()
    }

    /// What the device endpoints counted so far.
    pub fn device_counts(&self) -> DeviceCounts {
        lock(&self.inner).device_counts
    }
}
