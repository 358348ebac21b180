//! The fake provider's REST APIs: GitHub's user, emails, orgs and teams, and any JSON a test
//! routes to a path (Discord's guilds, Slack's team, Microsoft Graph, Bitbucket's emails).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::*;

pub(super) async fn gh_user(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let user = with_user!(state, headers);
    Json(json!({
        "login": user.login,
        "id": user.github_id,
        "name": user.name,
        "email": null,
        "avatar_url": format!("https://avatars.example.test/{}", user.github_id),
    }))
    .into_response()
}

pub(super) async fn gh_emails(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let user = with_user!(state, headers);
    Json(json!([
        { "email": format!("old-{}", user.email), "primary": false, "verified": true },
        { "email": user.email, "primary": true, "verified": user.email_verified },
    ]))
    .into_response()
}

pub(super) async fn gh_orgs(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let user = with_user!(state, headers);
    let orgs: Vec<Value> = user.orgs.iter().map(|o| json!({ "login": o })).collect();
    Json(Value::Array(orgs)).into_response()
}

pub(super) async fn gh_teams(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let user = with_user!(state, headers);
    let teams: Vec<Value> = user
        .teams
        .iter()
        .map(|(org, team)| json!({ "slug": team, "organization": { "login": org } }))
        .collect();
    Json(Value::Array(teams)).into_response()
}

/// Any other GET: the JSON a test put in `Knobs::routes` for this path.
pub(super) async fn routed(
    State(state): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(body) = lock(&state).knobs.public_routes.get(uri.path()) {
        return Json(body.clone()).into_response();
    }
    let _user = with_user!(state, headers);
    let inner = lock(&state);
    let full = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    match inner
        .knobs
        .routes
        .get(full)
        .or_else(|| inner.knobs.routes.get(uri.path()))
    {
        Some(body) => Json(body.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "no such route").into_response(),
    }
}
