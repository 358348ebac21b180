//! The daemon's HTTP side: the hosted login pages (docs/apps.md) on their own listener
//! (`[hosted]`), off unless configured. `GET /login/{key}` is a hosted login's start page
//! (where the user is going, and "Continue"), `POST /login/{key}` its "Continue" (the
//! binding cookie, then the provider), `GET /callback` where the provider sends the browser
//! back (the login finished as `callback` finishes it, then a page, or the
//! login's absolute `return_to`). The logic is the core's (`login/hosted.rs`); this module
//! only speaks HTTP, behind limits like the NATS edge's: requests in flight bounded (beyond
//! it `429` at once), the URL's length bounded, every request's time bounded, and the
//! security headers of [`pages::SECURITY_HEADERS`] on every answer.

pub(crate) mod ops;
mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::config::HostedConfig;
use crate::error::{Error, ErrorCode};
use crate::login::BindingCookie;
use crate::service::Lanyard;

/// The longest URL the pages read (a callback's query carries a state and a code).
const MAX_URI_BYTES: usize = 8 * 1024;

/// The longest one request may take: a callback's provider calls are bounded below it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stop waits for requests in flight.
const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Pages {
    lanyard: Arc<Lanyard>,
    in_flight: Arc<Semaphore>,
    /// Whether the pages are reached over https.
    secure: bool,
    /// Their origin as browsers name it (`https://login.example.com`).
    origin: String,
}

/// The running listener.
#[derive(Debug)]
pub struct Web {
    /// Where it listens (the configured address, with the port it got for port 0).
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Web {
    /// Binds the listener and serves the pages.
    pub async fn start(config: &HostedConfig, lanyard: Arc<Lanyard>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let pages = Pages {
            lanyard,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            secure: config.is_secure(),
            origin: config.origin(),
        };
        let router = Router::new()
            .route("/login/{key}", get(show_start).post(open_start))
            .route("/callback", get(callback))
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(pages.clone(), limits))
            .with_state(pages);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "the hosted pages' listener failed");
            }
        });
        tracing::info!(%addr, public_url = %config.public_url, "hosted pages listening");
        Ok(Self { addr, stop, task })
    }

    /// Stops listening; requests in flight get [`STOP_GRACE`] to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// The bounds every request passes, and the headers every answer carries.
async fn limits(State(pages): State<Pages>, request: Request, next: Next) -> Response {
    let mut response = if request.uri().to_string().len() > MAX_URI_BYTES {
        (StatusCode::URI_TOO_LONG, "the URL is too long").into_response()
    } else {
        match pages.in_flight.clone().try_acquire_owned() {
            Err(_) => pages::failed(&Error::new(
                ErrorCode::RateLimited,
                "too many requests in flight",
            )),
            Ok(permit) => {
                let answer = tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await;
                drop(permit);
                answer.unwrap_or_else(|_| {
                    pages::failed(&Error::unavailable("the request took too long"))
                })
            }
        }
    };
    for (name, value) in pages::SECURITY_HEADERS {
        // A page may set its own (the start page's CSP lets its form lead to the provider).
        response
            .headers_mut()
            .entry(HeaderName::from_static(name))
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

/// A hosted login's start page, shown: where the user is going, and "Continue".
async fn show_start(State(pages): State<Pages>, Path(key): Path<String>) -> Response {
    if !is_key(&key) {
        return not_found().await;
    }
    match pages.lanyard.hosted_page(&key).await {
        Ok(page) => pages::start(&page.provider, &page.provider_origin),
        Err(error) => pages::failed(&error),
    }
}

/// "Continue" on the start page: the login opened (once), the binding cookie, and on to the
/// provider. Only from the page itself: a form another site posts is refused, so the user
/// must have seen the page.
async fn open_start(
    State(pages): State<Pages>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !is_key(&key) {
        return not_found().await;
    }
    if !same_origin(&headers, &pages.origin) {
        tracing::warn!("a hosted start page was posted from elsewhere; refused");
        return pages::failed(&Error::new(
            ErrorCode::Forbidden,
            "the start page was not continued from itself",
        ));
    }
    match pages.lanyard.hosted_open(&key).await {
        Ok(start) => match HeaderValue::try_from(start.cookie.header()) {
            Ok(cookie) => {
                let mut response = see_other(&start.authorization_url);
                response.headers_mut().insert(header::SET_COOKIE, cookie);
                response
            }
            Err(_) => pages::failed(&Error::internal("the binding cookie is not a header")),
        },
        Err(error) => pages::failed(&error),
    }
}

/// A login's key: 64 hex digits.
fn is_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether a form post came from a page of `origin`: the browser's `Sec-Fetch-Site` says
/// so, or (a browser without it) its `Origin` is ours. Neither: not a browser on our page.
fn same_origin(headers: &HeaderMap, origin: &str) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match header("sec-fetch-site") {
        Some(site) => site == "same-origin",
        None => header("origin") == Some(origin),
    }
}

/// Where the provider sends the browser back. The login is finished in a task of its own:
/// a browser that goes away (or the request's time limit) must not cut it off after its
/// state was spent, or the app would never hear the outcome.
async fn callback(
    State(pages): State<Pages>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    let cookies = cookies(&headers);
    let lanyard = pages.lanyard.clone();
    let done = tokio::spawn(async move { lanyard.hosted_callback(&query, &cookies).await }).await;
    let Ok(done) = done else {
        return pages::failed(&Error::internal("the callback failed"));
    };
    let mut response = match &done.result {
        Ok(reply) => match reply.return_to.as_deref() {
            // Checked against the instance's `allowed_return_to` when the login started; a
            // relative one means nothing on Lanyard's own pages.
            Some(to) if to.starts_with("https://") || to.starts_with("http://") => see_other(to),
            _ => pages::signed_in(),
        },
        Err(error) => pages::failed(error),
    };
    if let Some(name) = &done.cookie {
        let clear = BindingCookie::clear(name, pages.secure);
        if let Ok(clear) = HeaderValue::try_from(clear) {
            response.headers_mut().insert(header::SET_COOKIE, clear);
        }
    }
    response
}

async fn not_found() -> Response {
    pages::failed(&Error::new(ErrorCode::NotFound, "no such page"))
}

fn see_other(location: &str) -> Response {
    match HeaderValue::try_from(location) {
        Ok(location) => {
            let mut response = StatusCode::SEE_OTHER.into_response();
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        Err(_) => pages::failed(&Error::internal("a redirect that is not a header")),
    }
}

/// The browser's cookies, by name (the first of a name wins).
fn cookies(headers: &HeaderMap) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let pairs = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='));
    for (name, value) in pairs {
        out.entry(name.to_owned())
            .or_insert_with(|| value.to_owned());
    }
    out
}
