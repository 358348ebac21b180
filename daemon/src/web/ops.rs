//! The operators' listener (`[ops]`): `/healthz` (the process is alive), `/readyz` (what a
//! load balancer waits for: NATS connected, the store's change feed followed; instances
//! that do not run are listed), `/metrics` (Prometheus). On an address of its own, so it can stay on
//! a private interface while the hosted pages are public. The probes read in-memory state
//! only: they answer in microseconds and never reach a provider or the store.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::OpsConfig;
use crate::service::Lanyard;

#[derive(Clone)]
struct Ops {
    lanyard: Arc<Lanyard>,
    nats: async_nats::Client,
}

/// The running listener.
#[derive(Debug)]
pub struct OpsListener {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl OpsListener {
    pub async fn start(
        config: &OpsConfig,
        lanyard: Arc<Lanyard>,
        nats: async_nats::Client,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let router = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(Ops { lanyard, nats });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "the ops listener failed");
            }
        });
        tracing::info!(%addr, "ops listener (healthz, readyz, metrics)");
        Ok(Self { addr, stop, task })
    }

    /// Stops listening, within a second.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(std::time::Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when NATS is connected and the store's change feed is followed; otherwise 503 and
/// what it waits for, a line each. An instance that does not run (restarting, or a stored
/// one this daemon cannot build) is listed but keeps nothing from being ready: the other
/// instances serve, and one bad shared instance must not take every daemon out of a load
/// balancer.
async fn readyz(State(ops): State<Ops>) -> Response {
    let mut waiting = Vec::new();
    if ops.nats.connection_state() != async_nats::connection::State::Connected {
        waiting.push("nats: not connected".to_owned());
    }
    if !ops.lanyard.admin.following() {
        waiting.push("store: the change feed is not followed".to_owned());
    }
    let degraded: Vec<String> = ops
        .lanyard
        .providers
        .not_serving()
        .into_iter()
        .map(|id| format!("provider {id}: not running"))
        .collect();
    let status = if waiting.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = String::from(if waiting.is_empty() {
        "ready\n"
    } else {
        "not ready\n"
    });
    for line in waiting.iter().chain(&degraded) {
        body.push_str(line);
        body.push('\n');
    }
    (status, body).into_response()
}

async fn metrics(State(ops): State<Ops>) -> Response {
    let health = ops.lanyard.health().await;
    let text = ops
        .lanyard
        .events
        .metrics()
        .render(health.events, &health.providers);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
