//! Runtime administration of provider instances: create, update, patch, delete, get, list.
//!
//! Admin-created instances live in the store, client secrets sealed by the vault. A change is
//! written to the store, then served here before the reply (the answering daemon hands it to
//! its supervisor and waits until it serves); the store's change feed brings it to every
//! other daemon (feed.rs). No daemon restarts.
//! Instances from the config file win on a clash: admin commands cannot create, change or
//! delete an id the file defines (`conflict`), so the file stays the source of truth for what
//! it declares.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use lanyard_proto::{
    Empty, Event, ProviderIdRequest, ProviderInstance, ProviderListReply, ProviderPatch,
    ProviderReply, ProviderView,
};

use crate::applied::Applied;
use crate::config::{ConfigError, ProviderConfig};
use crate::crypto::Vault;
use crate::error::{Error, ErrorCode};
use crate::events::EventSink;
use crate::providers::http::HttpClient;
use crate::providers::plugin::PluginSet;
use crate::providers::{InstanceSpec, Providers, RecordSpecs};
use crate::sessions::{now, rfc3339};
use crate::store::{ProviderRecord, Revision, SharedKey, Store, StoreError};

/// What an admin command does with a change that did not start on the answering daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undo {
    /// Take it back (a create: the instance never served anywhere a caller knows of).
    Delete,
    /// Leave it stored: other daemons may serve it already, and this one keeps trying.
    Keep,
}

/// How long an admin command waits for its change to serve on the answering daemon.
const APPLY_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How admin requests name an instance in error messages.
const LABEL: &str = "provider";

/// What provider administration needs.
#[derive(Debug)]
pub struct ProviderAdmin {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    providers: Providers,
    applied: Applied,
    plugins: Arc<PluginSet>,
    http: HttpClient,
    events: EventSink,
    /// Instances from the config file, by id.
    from_config: BTreeMap<String, ProviderConfig>,
    /// The names of the configured callers, for `token_readers`.
    callers: std::collections::HashSet<String>,
}

impl ProviderAdmin {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
        providers: Providers,
        applied: Applied,
        plugins: Arc<PluginSet>,
        http: HttpClient,
        events: EventSink,
        config: &crate::config::Config,
    ) -> Self {
        Self {
            store,
            vault,
            providers,
            applied,
            plugins,
            http,
            events,
            from_config: config
                .providers
                .iter()
                .map(|p| (p.id.clone(), p.clone()))
                .collect(),
            callers: config.callers.iter().map(|c| c.name.clone()).collect(),
        }
    }

    /// Whether this daemon follows the store's changes now (false while its feed
    /// reconnects), for `admin.status`.
    pub fn following(&self) -> bool {
        self.applied.following()
    }

    /// `admin.provider.create`: a new instance, serving when this returns.
    pub async fn create(&self, body: ProviderInstance) -> Result<ProviderReply, Error> {
        let mut config = parse(Value::Object(body.0))?;
        self.refuse_config_file(&config.id)?;
        let secret = config.client_secret.take();
        let now = now();
        let generation = ulid::Ulid::new().to_string();
        self.spec(config.clone(), secret.clone(), &generation)
            .await?;
        let record = ProviderRecord {
            secret: self.seal(&config.id, &generation, secret.as_ref())?,
            config,
            generation,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let revision = self
            .store
            .put_provider(&record, None)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "provider `{}` exists; update or delete it",
                        record.config.id
                    ),
                ),
                other => other.into(),
            })?;
        if let Err(error) = self
            .serve(&record.config.id, revision, Some(&record), Undo::Delete)
            .await
        {
            // Not serving: take the record back so the store never holds an instance that
            // does not run, and a retry is not refused with `conflict`.
            if let Err(undo) = self
                .store
                .delete_provider(&record.config.id, record.version)
                .await
            {
                tracing::error!(provider = %record.config.id, error = %undo,
                    "cannot remove a provider that failed to start");
            }
            return Err(error);
        }
        self.events.emit(Event::ProviderCreated {
            provider: record.config.id.clone(),
            kind: record.config.kind.clone(),
            version: record.version,
        });
        Ok(ProviderReply {
            provider: view(&record),
        })
    }

    /// `admin.provider.update`: replaces an instance's config. A request without
    /// `client_secret` keeps the stored one (replies never show it, so callers cannot send
    /// it back).
    pub async fn update(&self, body: ProviderInstance) -> Result<ProviderReply, Error> {
        let config = parse(Value::Object(body.0))?;
        let current = self.stored(&config.id).await?;
        self.replace(current, config).await
    }

    /// `admin.provider.patch`: changes some keys of an instance; `null` removes a key.
    pub async fn patch(&self, body: ProviderPatch) -> Result<ProviderReply, Error> {
        let ProviderPatch(patch) = body;
        let id = patch
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_request(format!("`{LABEL}.id` is required")))?
            .to_owned();
        let current = self.stored(&id).await?;
        let mut merged = serde_json::to_value(&current.config)
            .map_err(|e| Error::internal(format!("cannot encode provider: {e}")))?;
        let mut removes_secret = false;
        if let Value::Object(fields) = &mut merged {
            for (key, value) in patch {
                match value {
                    Value::Null if key == "client_secret" => removes_secret = true,
                    Value::Null => {
                        fields.remove(&key);
                    }
                    value => {
                        fields.insert(key, value);
                    }
                }
            }
        }
        let config = parse(merged)?;
        let mut current = current;
        if removes_secret {
            current.secret = None;
        }
        self.replace(current, config).await
    }

    async fn replace(
        &self,
        current: ProviderRecord,
        mut config: ProviderConfig,
    ) -> Result<ProviderReply, Error> {
        let secret = match config.client_secret.take() {
            Some(secret) => Some(secret),
            None => match &current.secret {
                Some(sealed) => Some(
                    self.vault
                        .open_str(sealed, &slot(&current.config.id, &current.generation))
                        .map_err(|e| Error::internal(format!("stored secret: {e}")))?,
                ),
                None => None,
            },
        };
        self.spec(config.clone(), secret.clone(), &current.generation)
            .await?;
        let record = ProviderRecord {
            secret: self.seal(&config.id, &current.generation, secret.as_ref())?,
            config,
            generation: current.generation.clone(),
            version: current.version + 1,
            created_at: current.created_at,
            updated_at: now(),
        };
        let revision = self
            .store
            .put_provider(&record, Some(current.version))
            .await?;
        self.serve(&record.config.id, revision, Some(&record), Undo::Keep)
            .await?;
        self.events.emit(Event::ProviderUpdated {
            provider: record.config.id.clone(),
            kind: record.config.kind.clone(),
            version: record.version,
        });
        Ok(ProviderReply {
            provider: view(&record),
        })
    }

    /// `admin.provider.delete`: stops serving at once; its pending logins fail with
    /// `invalid_state`.
    pub async fn delete(&self, request: ProviderIdRequest) -> Result<Empty, Error> {
        let current = self.stored(&request.id).await?;
        let revision = self
            .store
            .delete_provider(&request.id, current.version)
            .await?;
        self.serve(&request.id, revision, None, Undo::Keep).await?;
        self.events.emit(Event::ProviderDeleted {
            provider: current.config.id,
            kind: current.config.kind,
            version: current.version,
        });
        Ok(Empty {})
    }

    /// `admin.provider.get`
    pub async fn get(&self, request: ProviderIdRequest) -> Result<ProviderReply, Error> {
        if let Some(config) = self.from_config.get(&request.id) {
            return Ok(ProviderReply {
                provider: config_view(config),
            });
        }
        let record = self.stored(&request.id).await?;
        Ok(ProviderReply {
            provider: view(&record),
        })
    }

    /// `admin.provider.list`: config-file instances, then admin-created ones.
    pub async fn list(&self) -> Result<ProviderListReply, Error> {
        let mut providers: Vec<ProviderView> = self.from_config.values().map(config_view).collect();
        let mut stored = self.store.list_providers().await?;
        stored.sort_by(|a, b| a.config.id.cmp(&b.config.id));
        providers.extend(
            stored
                .iter()
                .filter(|r| !self.from_config.contains_key(&r.config.id))
                .map(view),
        );
        Ok(ProviderListReply { providers })
    }

    fn refuse_config_file(&self, id: &str) -> Result<(), Error> {
        if self.from_config.contains_key(id) {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!("provider `{id}` is defined in the config file; change it there"),
            ));
        }
        Ok(())
    }

    async fn stored(&self, id: &str) -> Result<ProviderRecord, Error> {
        self.refuse_config_file(id)?;
        self.store
            .get_provider(id)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("no provider `{id}`")))
    }

    /// Has the change of `id` written at `revision` serve here before the reply: the
    /// supervisor takes it in now (the feed brings it too, and to every other daemon; the
    /// revision makes that a no-op here), and this waits until it does.
    async fn serve(
        &self,
        id: &str,
        revision: Revision,
        record: Option<&ProviderRecord>,
        undo: Undo,
    ) -> Result<(), Error> {
        self.providers
            .apply(id.to_owned(), revision, record.cloned().map(Box::new));
        let key = SharedKey::Provider(id.to_owned());
        let why = match self.applied.wait_ok(&key, revision, APPLY_LIMIT).await {
            Some(Ok(())) => return Ok(()),
            Some(Err(why)) => why.to_string(),
            None => "it has not been applied yet".to_owned(),
        };
        // It validated and built here a moment ago, so this is the daemon's trouble (a
        // plugin call that overran on a busy machine, say), not the request's.
        let stored = match undo {
            Undo::Delete => "it was not stored",
            Undo::Keep => "the change is stored, and this daemon keeps trying (see admin.status)",
        };
        Err(Error::unavailable(format!(
            "provider `{id}` did not start on this daemon within {} s: {why}; {stored}",
            APPLY_LIMIT.as_secs()
        )))
    }

    /// Validates a config against its plugin, as the config file's instances are (building
    /// it calls the plugin, bounded).
    async fn spec(
        &self,
        config: ProviderConfig,
        secret: Option<secrecy::SecretString>,
        generation: &str,
    ) -> Result<InstanceSpec, Error> {
        config
            .validate(LABEL)
            .map_err(|e| Error::bad_request(e.detail()))?;
        let callers = self.callers.iter().map(String::as_str).collect();
        config
            .check_readers(LABEL, &callers)
            .map_err(|e| Error::bad_request(e.detail()))?;
        if config.client_secret_file.is_some() || config.client_secret_env.is_some() {
            return Err(Error::bad_request(format!(
                "`{LABEL}.client_secret_file` and `client_secret_env` name files and variables of \
                 the daemon's host; over NATS, send `client_secret`"
            )));
        }
        let plugin = self.plugins.get(&config.kind).ok_or_else(|| {
            let kinds: Vec<&str> = self.plugins.kinds().collect();
            Error::bad_request(format!(
                "`{LABEL}.kind`: no plugin of kind `{}` (loaded: {kinds:?})",
                config.kind
            ))
        })?;
        let spec = InstanceSpec {
            config,
            secret,
            plugin: plugin.clone(),
            http: self.http.clone(),
            label: LABEL.into(),
            generation: generation.to_owned(),
        };
        spec.build()
            .await
            .map_err(|e| Error::bad_request(e.detail()))?;
        Ok(spec)
    }

    fn seal(
        &self,
        id: &str,
        generation: &str,
        secret: Option<&secrecy::SecretString>,
    ) -> Result<Option<crate::crypto::Sealed>, Error> {
        secret
            .map(|s| self.vault.seal_str(s, &slot(id, generation)))
            .transpose()
            .map_err(|e| Error::internal(format!("cannot seal the client secret: {e}")))
    }
}

/// How the supervisor builds stored instances: the secret opened for its slot, the plugin
/// by kind. An instance that does not build (its plugin is missing on this daemon, say) is
/// reported by the supervisor and does not serve here; the others do.
#[derive(Debug)]
pub struct StoredSpecs {
    pub vault: Arc<Vault>,
    pub plugins: Arc<PluginSet>,
    pub http: HttpClient,
}

impl RecordSpecs for StoredSpecs {
    fn spec(&self, record: &ProviderRecord) -> Result<InstanceSpec, ConfigError> {
        let id = &record.config.id;
        let secret = match &record.secret {
            Some(sealed) => Some(
                self.vault
                    .open_str(sealed, &slot(id, &record.generation))
                    .map_err(|e| {
                        ConfigError::instance(id, format!("cannot open the stored secret: {e}"))
                    })?,
            ),
            None => None,
        };
        let plugin = self.plugins.get(&record.config.kind).ok_or_else(|| {
            ConfigError::instance(
                id,
                format!("no plugin of kind `{}` on this daemon", record.config.kind),
            )
        })?;
        Ok(InstanceSpec {
            config: record.config.clone(),
            secret,
            plugin: plugin.clone(),
            http: self.http.clone(),
            label: LABEL.into(),
            generation: record.generation.clone(),
        })
    }
}

/// The vault slot of an instance's client secret.
fn slot(id: &str, generation: &str) -> String {
    format!("provider-secret/{id}/{generation}")
}

fn parse(body: Value) -> Result<ProviderConfig, Error> {
    if !body.is_object() {
        return Err(Error::bad_request("the request body must be a JSON object"));
    }
    serde_json::from_value(body).map_err(|e| Error::bad_request(format!("`{LABEL}`: {e}")))
}

fn masked(config: &ProviderConfig, has_secret: bool) -> Map<String, Value> {
    let mut fields = match serde_json::to_value(config) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(),
    };
    fields.retain(|_, v| !v.is_null());
    if has_secret {
        fields.insert("client_secret".into(), json!("********"));
    }
    fields
}

fn view(record: &ProviderRecord) -> ProviderView {
    ProviderView {
        config: masked(&record.config, record.secret.is_some()),
        source: "admin".into(),
        version: record.version,
        created_at: Some(rfc3339(record.created_at)),
        updated_at: Some(rfc3339(record.updated_at)),
    }
}

fn config_view(config: &ProviderConfig) -> ProviderView {
    let has_secret = config.client_secret.is_some()
        || config.client_secret_file.is_some()
        || config.client_secret_env.is_some();
    ProviderView {
        config: masked(config, has_secret),
        source: "config".into(),
        version: 0,
        created_at: None,
        updated_at: None,
    }
}
