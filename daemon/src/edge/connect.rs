//! Connecting to NATS with the configured authentication and TLS, and checking a connection answers.

use async_nats::{Client, ConnectOptions};
use bytes::Bytes;
use futures::StreamExt;

use super::{nats_error, EdgeError};
use crate::config::{NatsConfig, SecretSource};
use secrecy::ExposeSecret;

/// Connects to NATS with the configured authentication and TLS. The client reconnects on its
/// own and restores its subscriptions.
pub async fn connect(config: &NatsConfig) -> Result<Client, EdgeError> {
    let secret = |source: &SecretSource<'_>| {
        source
            .resolve()
            .map(|s| s.map(|s| s.expose_secret().to_owned()))
    };
    let [password, token, nkey_seed] = config.secrets();
    let mut options = ConnectOptions::new()
        .name(&config.name)
        .max_reconnects(None)
        .event_callback(|event| async move {
            tracing::info!(%event, "nats connection event");
        });
    if let (Some(user), Some(password)) = (&config.user, secret(&password)?) {
        options = options.user_and_password(user.clone(), password);
    }
    if let Some(token) = secret(&token)? {
        options = options.token(token);
    }
    if let Some(seed) = secret(&nkey_seed)? {
        options = options.nkey(seed);
    }
    if let Some(creds) = &config.creds_file {
        options = options
            .credentials_file(creds)
            .await
            .map_err(nats_error("nats.creds_file"))?;
    }
    if let Some(ca) = &config.tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.tls.required {
        options = options.require_tls(true);
    }
    // Several servers of a cluster may be listed, comma-separated; the client also learns the
    // others from the one it reaches.
    let urls: Vec<&str> = config
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    options.connect(urls).await.map_err(nats_error(format!(
        "cannot connect to NATS at {}",
        config.url
    )))
}

/// Waits for a message to our own inbox to come back. The server handles one connection's
/// operations in order, so once it does, every subscription made before is live: "started"
/// then means "serving". (`Client::flush` only writes; it does not wait for the server.)
pub async fn round_trip(client: &Client) -> Result<(), EdgeError> {
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(nats_error("cannot subscribe"))?;
    client
        .publish(inbox, Bytes::new())
        .await
        .map_err(nats_error("cannot publish"))?;
    match tokio::time::timeout(std::time::Duration::from_secs(10), echo.next()).await {
        Ok(Some(_)) => Ok(()),
        _ => Err(EdgeError::NoAnswer),
    }
}
