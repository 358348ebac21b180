//! A browser connecting to NATS over WebSocket with its session, which it never sees: the
//! service's page sets the access token as an HttpOnly cookie, and the server's
//! `token_cookie` hands it to the callout. A real headless Chromium runs the page, whose
//! script speaks NATS over the WebSocket and reports what happened.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use lanyard_tests::browser::Browser;

use super::*;

/// The page's script: connect, then (if admitted) a round trip on its own subject and a
/// publish to another user's, then report.
const PAGE: &str = r#"<!doctype html><html><body><script>
const report = (r) => fetch("/report?" + new URLSearchParams(r));
const ws = new WebSocket("WS_URL");
ws.binaryType = "arraybuffer";
let seen = "", stage = "hello", done = false;
const finish = (result) => { if (!done) { done = true; report({ result, seen }); ws.close(); } };
ws.onmessage = (e) => {
  seen += new TextDecoder().decode(e.data);
  if (stage === "hello" && seen.includes("INFO ")) {
    stage = "connect";
    ws.send('CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\nPING\r\n');
  } else if (stage === "connect" && seen.includes("-ERR")) {
    finish("refused");
  } else if (stage === "connect" && seen.includes("PONG")) {
    stage = "use";
    ws.send("SUB OWN 1\r\nPUB OWN 2\r\nhi\r\nPUB OTHER 1\r\nx\r\nPING\r\n");
  } else if (stage === "use" && seen.includes("MSG OWN 1 2") &&
             seen.includes("Permissions Violation")) {
    finish("connected");
  }
};
ws.onclose = () => finish(stage === "connect" ? "refused" : "closed in " + stage);
ws.onerror = () => finish("error in " + stage);
</script></body></html>"#;

struct Site {
    page: String,
    token: String,
    reports: tokio::sync::mpsc::UnboundedSender<HashMap>,
}

type HashMap = std::collections::HashMap<String, String>;

/// The service's page, served with the session cookie (`/with-session`) or without.
async fn page(site: &Site, with_session: bool) -> impl IntoResponse {
    let mut headers = axum::http::HeaderMap::new();
    if with_session {
        let cookie = format!(
            "lanyard_session={}; HttpOnly; SameSite=Strict; Path=/",
            site.token
        );
        headers.insert("set-cookie", cookie.parse().unwrap());
    }
    (headers, Html(site.page.clone()))
}

/// Serves the page and takes its reports; returns the site's address.
async fn serve(site: Site) -> std::net::SocketAddr {
    let site = Arc::new(site);
    let app = Router::new()
        .route(
            "/with-session",
            get(|State(s): State<Arc<Site>>| async move { page(&s, true).await }),
        )
        .route(
            "/without",
            get(|State(s): State<Arc<Site>>| async move { page(&s, false).await }),
        )
        .route(
            "/report",
            get(
                |State(s): State<Arc<Site>>, Query(report): Query<HashMap>| async move {
                    let _ = s.reports.send(report);
                    ""
                },
            ),
        )
        .with_state(site);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A server with a WebSocket listener that takes the token from the `lanyard_session`
/// cookie.
fn websocket_server(issuer: &nkeys::KeyPair, dir: &std::path::Path) -> NatsServer {
    let websocket = r#"
websocket {
  host: 127.0.0.1
  port: -1
  no_tls: true
  token_cookie: "lanyard_session"
}
"#;
    server_with(issuer, None, dir, websocket)
}

#[tokio::test]
async fn a_browser_connects_over_websocket_with_its_session_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = nkeys::KeyPair::new_account();
    let nats = websocket_server(&issuer, dir.path());
    let ws_url = nats
        .websocket_url()
        .expect("the server reports its WebSocket port");
    let t = daemon_on(nats, &issuer, None, "").await;
    let login = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let user_id = login["user"]["id"].as_str().unwrap();
    let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
    let page = PAGE
        .replace("WS_URL", &ws_url)
        .replace("OWN", &format!("app.{user_id}.browser"))
        .replace("OTHER", "app.usr_someone_else.browser");
    let site = serve(Site {
        page,
        token: login["session"]["access_token"]
            .as_str()
            .unwrap()
            .to_owned(),
        reports,
    })
    .await;

    // Without the cookie: refused.
    let browser = Browser::open(&format!("http://{site}/without")).unwrap();
    let report = next_report(&mut reported).await;
    drop(browser);
    assert_eq!(report["result"], "refused", "{report:?}");
    assert!(
        report["seen"].contains("Authorization Violation"),
        "{report:?}"
    );

    // With it: admitted, its own subject works, another user's does not.
    let browser = Browser::open(&format!("http://{site}/with-session")).unwrap();
    let report = next_report(&mut reported).await;
    drop(browser);
    assert_eq!(report["result"], "connected", "{report:?}");
}

async fn next_report(reported: &mut tokio::sync::mpsc::UnboundedReceiver<HashMap>) -> HashMap {
    tokio::time::timeout(lanyard_tests::PATIENCE, reported.recv())
        .await
        .expect("the page reports")
        .unwrap()
}
