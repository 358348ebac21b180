//! A normal login through a small web service, in a real headless Chromium: the service
//! starts the login over NATS, keeps the binding in an HttpOnly cookie and sends the browser
//! to the provider; the provider sends it back to the service's callback, which finishes the
//! login with the cookie. A callback URL opened in another browser (no cookie) is refused.
//! The service listens on a loopback port of its own (a loopback redirect URI, any port).

use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use lanyard_tests::browser::Browser;
use lanyard_tests::harness::{CLIENT_ID, CLIENT_SECRET};
use lanyard_tests::TestDaemon;
use serde_json::{json, Value};

/// The example service.
struct Service {
    nats: async_nats::Client,
    redirect_uri: String,
    /// When set, a callback is kept instead of finished (to replay it in another browser).
    hold: std::sync::atomic::AtomicBool,
    held: Mutex<Option<String>>,
    outcomes: tokio::sync::mpsc::UnboundedSender<Value>,
}

async fn lanyard(nats: &async_nats::Client, command: &str, body: Value) -> Value {
    let reply = lanyard_tests::patient_request(
        nats,
        format!("lanyard.v1.{command}"),
        body.to_string().into(),
    )
    .await
    .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

/// `/login`: the login started, the binding in a cookie, the browser sent to the provider.
async fn login(State(s): State<Arc<Service>>) -> Response {
    let body = json!({ "provider": "web", "redirect_uri": s.redirect_uri });
    let started = lanyard(&s.nats, "login", body).await;
    let cookie = format!(
        "binding={}; HttpOnly; SameSite=Lax; Path=/",
        started["binding"].as_str().unwrap()
    );
    let location = started["authorization_url"].as_str().unwrap().to_owned();
    (
        StatusCode::FOUND,
        [(header::SET_COOKIE, cookie), (header::LOCATION, location)],
    )
        .into_response()
}

/// `/callback`: the login finished with this browser's cookie.
async fn callback(
    State(s): State<Arc<Service>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Html<String> {
    let query = query.unwrap_or_default();
    if s.hold.swap(false, std::sync::atomic::Ordering::SeqCst) {
        *s.held.lock().unwrap() = Some(query);
        let _ = s.outcomes.send(json!({ "held": true }));
        return Html("<p>Held.</p>".into());
    }
    let binding = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("binding="))
        .map(str::to_owned);
    let mut body = json!({ "query": query, "redirect_uri": s.redirect_uri });
    if let Some(binding) = binding {
        body["binding"] = json!(binding);
    }
    let done = lanyard(&s.nats, "callback", body).await;
    let page = match done["user"]["username"].as_str() {
        Some(name) => format!("<p>Signed in as {name}.</p>"),
        None => format!("<p>Sign-in failed: {}</p>", done["error"]["code"]),
    };
    let _ = s.outcomes.send(done);
    Html(page)
}

async fn next(outcomes: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(lanyard_tests::PATIENCE, outcomes.recv())
        .await
        .expect("the service hears back from the browser")
        .unwrap()
}

#[tokio::test]
async fn a_browser_logs_in_through_a_web_service_and_another_browser_cannot_finish_it() {
    let t = TestDaemon::start_plus(|issuer| {
        format!(
            "\n[[providers]]\nid = \"web\"\nkind = \"oidc\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret = \"{CLIENT_SECRET}\"\nredirect_uris = [\"http://127.0.0.1/callback\"]\n\
             issuer = \"{issuer}\"\n"
        )
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = listener.local_addr().unwrap();
    let (outcomes, mut outcome) = tokio::sync::mpsc::unbounded_channel();
    let service = Arc::new(Service {
        nats: t.client.clone(),
        redirect_uri: format!("http://{site}/callback"),
        hold: false.into(),
        held: Mutex::new(None),
        outcomes,
    });
    let app = Router::new()
        .route("/login", get(login))
        .route("/callback", get(callback))
        .with_state(service.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    t.idp
        .set_user(lanyard_tests::TestUser::from_email("web@example.test"));
    // The whole login in one browser: signed in.
    let browser = Browser::open(&format!("http://{site}/login")).unwrap();
    let done = next(&mut outcome).await;
    drop(browser);
    assert_eq!(done["user"]["username"], "web", "{done}");
    assert!(done["session"]["access_token"].is_string());

    // A login whose callback another browser opens (a link sent to a victim, say): that
    // browser has no binding cookie, and the login is refused and spent.
    service
        .hold
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let first = Browser::open(&format!("http://{site}/login")).unwrap();
    assert_eq!(next(&mut outcome).await["held"], true);
    drop(first);
    let query = service.held.lock().unwrap().take().unwrap();
    let other = Browser::open(&format!("http://{site}/callback?{query}")).unwrap();
    let refused = next(&mut outcome).await;
    drop(other);
    assert_eq!(refused["error"]["code"], "invalid_state", "{refused}");
}
