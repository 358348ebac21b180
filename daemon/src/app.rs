//! Assembly: validates configuration and plugins, opens the store, connects to NATS, starts
//! the provider actors, follows the store's change feed and starts the edge; and stops them
//! again.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::admin::{ProviderAdmin, StoredSpecs};
use crate::applied::Applied;
use crate::config::{Config, ConfigError, StoreKind};
use crate::crypto::Vault;
use crate::edge::{self, Edge, EdgeError};
use crate::events::EventSink;
use crate::feed::Follower;
use crate::login::Logins;
use crate::login_state::LoginStates;
use crate::provider_tokens::TokenVault;
use crate::providers::http::HttpClient;
use crate::providers::plugin::PluginSet;
use crate::providers::{Instance, InstanceSpec, Providers};
use crate::service::Lanyard;
use crate::sessions::Sessions;
use crate::store::{JetStreamOptions, JetStreamStore, SledStore, Store, StoreError};

/// Why the daemon did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Nats(#[from] EdgeError),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    #[error("cannot create {}: {source}", path.display())]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened or read; `what` says which step.
    #[error("{what}: {source}")]
    Store {
        what: &'static str,
        #[source]
        source: StoreError,
    },
    #[error(
        "store = \"jetstream\" needs nats-server 2.10 or newer with JetStream enabled; this \
         server is {0}"
    )]
    ServerTooOld(String),
    #[error("cannot start the provider supervisor: {0}")]
    Providers(#[source] crate::error::Error),
    #[error("cannot listen for the hosted pages (hosted.listen): {0}")]
    Hosted(#[source] std::io::Error),
    #[error("cannot listen for probes and metrics (ops.listen): {0}")]
    Ops(#[source] std::io::Error),
}

impl StartError {
    /// The process exit code: 64 (EX_USAGE) for configuration errors, 1 otherwise.
    pub const fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_) => 64,
            _ => 1,
        }
    }

    fn store(what: &'static str) -> impl FnOnce(StoreError) -> Self {
        move |source| Self::Store { what, source }
    }
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    edge: Edge,
    providers: Providers,
    follower: Follower,
    sweeper: JoinHandle<()>,
    lanyard: Arc<Lanyard>,
    /// The hosted pages' listener, when `[hosted]` is configured.
    web: Option<crate::web::Web>,
    /// The probes and metrics listener, when `[ops]` is configured.
    ops: Option<crate::web::ops::OpsListener>,
    /// The NATS client the daemon serves on.
    pub client: async_nats::Client,
}

/// What [`prepare`] checked and loaded.
#[derive(Debug)]
pub struct Prepared {
    /// The config file's provider instances, built.
    pub instances: Vec<Instance>,
    pub plugins: Arc<PluginSet>,
    pub http: HttpClient,
}

/// Validates everything that needs no network: config, plugins, provider instances (each
/// configured by its plugin, a bounded call).
pub async fn prepare(config: &Config) -> Result<Prepared, StartError> {
    config.nats.check()?;
    let dirs = config.plugin_dirs();
    let plugins = PluginSet::scan(&dirs);
    let http = HttpClient::new(config.http.clone()).map_err(StartError::Http)?;
    let mut instances = Vec::new();
    for (index, provider) in config.providers.iter().enumerate() {
        let plugin = plugins.get(&provider.kind).ok_or_else(|| {
            let kinds: Vec<&str> = plugins.kinds().collect();
            let mut message = format!(
                "no plugin of kind `{}` in {dirs:?} (found: {kinds:?})",
                provider.kind
            );
            for error in &plugins.errors {
                message.push_str("\n  ");
                message.push_str(error);
            }
            ConfigError::at(format!("providers[{index}].kind"), message)
        })?;
        let spec = InstanceSpec {
            config: provider.clone(),
            secret: provider.resolve_secret(&format!("providers[{index}]"))?,
            plugin: plugin.clone(),
            http: http.clone(),
            label: format!("providers[{index}]"),
            generation: crate::service::CONFIG_GENERATION.into(),
        };
        instances.push(spec.build().await?);
    }
    Ok(Prepared {
        instances,
        plugins: Arc::new(plugins),
        http,
    })
}

/// Opens the configured store: sled in the data directory, or JetStream buckets through the
/// daemon's NATS connection.
async fn open_store(
    config: &Config,
    client: &async_nats::Client,
) -> Result<Arc<dyn Store>, StartError> {
    open_store_kind(config, config.store, client).await
}

/// Opens a store of the given kind with the config's settings (`lanyard store copy` opens
/// both kinds).
pub async fn open_store_kind(
    config: &Config,
    kind: StoreKind,
    client: &async_nats::Client,
) -> Result<Arc<dyn Store>, StartError> {
    let store: Arc<dyn Store> = match kind {
        StoreKind::Sled => Arc::new(
            SledStore::open_with(&config.data_dir, config.sled.cache_mb * 1024 * 1024)
                .map_err(StartError::store("cannot open the store"))?,
        ),
        StoreKind::Jetstream => {
            let version = client.server_info().version;
            if !jetstream_capable(&version) {
                return Err(StartError::ServerTooOld(version));
            }
            // Boxed, as the store's own steps are: this frame stays small on the stack.
            Arc::new(
                Box::pin(JetStreamStore::open(
                    client.clone(),
                    &jetstream_options(config),
                ))
                .await
                .map_err(StartError::store(
                    "cannot open the JetStream store (is JetStream enabled on the NATS \
                         server?)",
                ))?,
            )
        }
    };
    Ok(store)
}

/// Whether a nats-server version (`2.10.26`) is one the JetStream store works with.
fn jetstream_capable(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 10)
}

/// The JetStream store's options from the config.
pub fn jetstream_options(config: &Config) -> JetStreamOptions {
    JetStreamOptions {
        bucket_prefix: config.jetstream.bucket_prefix.clone(),
        replicas: config.jetstream.replicas,
        pending_ttl: Duration::from_secs(config.pending_ttl_secs),
    }
}

/// The named callers with their tokens and rate limits, for the edge.
fn callers(
    config: &Config,
) -> Result<Vec<(String, secrecy::SecretString, Option<std::num::NonZeroU32>)>, ConfigError> {
    config
        .callers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Ok((
                c.name.clone(),
                c.resolve_token(&format!("callers[{i}]"))?,
                c.rate_limit_per_sec,
            ))
        })
        .collect()
}

/// Deletes expired pending logins every `pending_ttl_secs` (at most every minute).
fn spawn_sweeper(lanyard: Arc<Lanyard>, pending_ttl_secs: u64) -> JoinHandle<()> {
    let every = Duration::from_secs(pending_ttl_secs.clamp(1, 60));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            lanyard.sweep().await;
        }
    })
}

impl Daemon {
    /// Starts the daemon: nothing connects anywhere until the configuration is known good.
    ///
    /// Long because it is the daemon's assembly in dependency order, each piece made from
    /// those above it; split, that order would hide behind argument lists.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let Prepared {
            instances,
            plugins,
            http,
        } = prepare(&config).await?;
        let admin_token = config.admin.resolve_token()?;
        if config.stored_login_states {
            tracing::warn!(
                "stored_login_states = true: logins are started as the previous version started \
                 them (stored, so its daemons can finish them); turn it off once every daemon \
                 runs this version"
            );
        }
        let callers = callers(&config)?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let client = edge::connect(&config.nats).await?;
        let store = open_store(&config, &client).await?;
        let vault = Arc::new(Vault::load(&config.vault, &config.data_dir)?);
        let sessions = Arc::new(
            Sessions::load(store.as_ref(), vault.clone(), config.sessions.clone())
                .await
                .map_err(StartError::store("cannot load the signing key"))?,
        );
        let applied = Applied::default();
        let stored = Arc::new(StoredSpecs {
            vault: vault.clone(),
            plugins: plugins.clone(),
            http: http.clone(),
        });
        let metrics = Arc::new(crate::metrics::Metrics::default());
        plugins.attach_metrics(&metrics);
        store.attach_metrics(&metrics);
        let providers = Providers::start(instances, stored, applied.clone(), metrics.clone())
            .await
            .map_err(StartError::Providers)?;
        // Stored providers and the signing keys come from the store's change feed, which
        // every daemon follows: what it holds now, then every change.
        let follower = Follower::start(
            store.as_ref(),
            sessions.clone(),
            providers.clone(),
            applied.clone(),
        )
        .await
        .map_err(StartError::store("cannot follow the store's changes"))?;
        let (events, event_queue) = EventSink::channel_with(metrics);
        let kicker = crate::callout::Kicker::connect(&config).await?;
        let lanyard = Arc::new(
            Lanyard::new(
                store.clone(),
                ProviderAdmin::new(
                    store.clone(),
                    vault.clone(),
                    providers.clone(),
                    applied.clone(),
                    plugins,
                    http,
                    events.clone(),
                    &config,
                ),
                TokenVault::new(
                    store,
                    vault.clone(),
                    providers.clone(),
                    events.clone(),
                    config.token_refresh_margin_secs,
                ),
                providers.clone(),
                sessions,
                events,
                Logins {
                    states: Arc::new(LoginStates::new(&vault)),
                    ttl_secs: config.pending_ttl_secs,
                    stored: config.stored_login_states,
                    vault: vault.clone(),
                    hosted: config.hosted.clone(),
                },
            )
            .with_nats_kicker(kicker),
        );
        // Bound before the edge serves, so a listener that cannot bind stops the start-up
        // with nothing serving yet.
        let web = match &config.hosted {
            Some(hosted) => Some(
                crate::web::Web::start(hosted, lanyard.clone())
                    .await
                    .map_err(StartError::Hosted)?,
            ),
            None => None,
        };
        let ops = match &config.ops {
            Some(ops) => Some(
                crate::web::ops::OpsListener::start(ops, lanyard.clone(), client.clone())
                    .await
                    .map_err(StartError::Ops)?,
            ),
            None => None,
        };
        if config.events.stream {
            edge::ensure_events_stream(&client, &config.nats.subject_prefix, &config.events)
                .await?;
        }
        let edge = Edge::start(
            client.clone(),
            lanyard.clone(),
            &config.nats,
            crate::edge::Limits {
                max_request_bytes: config.max_request_bytes,
                max_in_flight: config.max_in_flight,
                shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
            },
            edge::Access {
                admin_token,
                callers,
                nats_callout: crate::callout::NatsCallout::from_config(&config)?.map(Arc::new),
            },
            edge::EventRoute {
                queue: event_queue,
                stream: config.events.stream,
            },
        )
        .await?;
        let sweeper = spawn_sweeper(lanyard.clone(), config.pending_ttl_secs);
        tracing::info!(
            subject_prefix = %config.nats.subject_prefix,
            providers = config.providers.len(),
            "lanyard is serving"
        );
        Ok(Self {
            edge,
            providers,
            follower,
            sweeper,
            lanyard,
            web,
            ops,
            client,
        })
    }

    /// Where probes and metrics are served, when `[ops]` is configured.
    pub fn ops_addr(&self) -> Option<std::net::SocketAddr> {
        self.ops.as_ref().map(|ops| ops.addr)
    }

    /// Where the hosted pages listen, when `[hosted]` is configured.
    pub fn hosted_addr(&self) -> Option<std::net::SocketAddr> {
        self.web.as_ref().map(|web| web.addr)
    }

    /// Stops serving, stops the actors, and releases the store. Bounded whatever NATS is
    /// doing: the edge's grace period for requests in flight, then a few seconds for events
    /// and the last flush (see [`Edge::stop`]).
    pub async fn shutdown(self) {
        if let Some(web) = self.web {
            web.stop().await;
        }
        if let Some(ops) = self.ops {
            ops.stop().await;
        }
        // Before the edge, so that their events still go out and other daemons take their
        // logins over.
        self.lanyard.devices.stop(Duration::from_secs(2)).await;
        self.edge.stop().await;
        self.sweeper.abort();
        let _ = self.sweeper.await;
        self.follower.stop().await;
        self.providers.stop();
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        if connected
            && tokio::time::timeout(Duration::from_secs(2), self.client.flush())
                .await
                .is_err()
        {
            tracing::warn!("NATS did not take the last flush in time");
        }
    }
}
