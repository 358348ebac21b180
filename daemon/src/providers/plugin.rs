//! The host side of the plugin boundary: finds provider plugins, checks their ABI before
//! touching anything else, and calls their JSON operations safely. Loaded libraries are never
//! unloaded.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lanyard_provider_sdk::abi::{AbiBuf, AbiStr, EntryFn, Op, ProviderTableV1, Status};
use lanyard_provider_sdk::{Description, ProviderError, ABI_VERSION, ENTRY_SYMBOL};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a file could not be loaded as a plugin. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot be loaded as a shared library: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("{path}: not a Lanyard provider plugin (no `lanyard_provider_entry_v1` symbol)")]
    NotAPlugin { path: PathBuf },
    #[error("{path}: plugin ABI version {found}, but this daemon speaks version {ABI_VERSION}")]
    AbiVersion { path: PathBuf, found: u32 },
    #[error("{path}: plugin table is {found} bytes, smaller than the {expected} of ABI v1")]
    TableSize {
        path: PathBuf,
        found: u32,
        expected: usize,
    },
    #[error("{path}: the plugin's {what} is not valid UTF-8")]
    BadString { path: PathBuf, what: &'static str },
    #[error("{path}: describe failed: {error}")]
    Describe { path: PathBuf, error: CallError },
}

/// Why a plugin operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The plugin reported an error of its own.
    #[error("{0}")]
    Provider(ProviderError),
    #[error("the plugin panicked in {op}: {message}")]
    Panicked { op: &'static str, message: String },
    #[error("the plugin does not implement {op}")]
    UnknownOp { op: &'static str },
    #[error("the plugin rejected the input of {op}: {message}")]
    BadInput { op: &'static str, message: String },
    #[error("the plugin's {op} output is not valid: {message}")]
    BadOutput { op: &'static str, message: String },
}

/// Why a bounded plugin call ([`Plugin::call_bounded`]) gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BoundedError {
    #[error(transparent)]
    Call(CallError),
    /// The call did not return in time; its thread is abandoned.
    #[error("the plugin did not answer in time")]
    Overran,
    /// The plugin has too many abandoned calls to be called again.
    #[error("the plugin has {hung} calls that never returned; restart the daemon")]
    Disabled { hung: usize },
}

/// Plugin calls that overran and still hold a thread, beyond which a plugin is not called.
pub const MAX_HUNG_CALLS: usize = 8;

/// How long a plugin may take to describe itself when it is loaded.
const DESCRIBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Asks a plugin being loaded to describe itself, on a thread of its own so a plugin that
/// never answers cannot hang the daemon's start (the thread is abandoned).
fn describe(plugin: &Plugin) -> Result<Description, CallError> {
    let table = plugin.table;
    let probe = Plugin {
        path: plugin.path.clone(),
        table,
        kind: plugin.kind.clone(),
        version: plugin.version.clone(),
        description: Description::default(),
        hung: std::sync::atomic::AtomicUsize::new(0),
        metrics: std::sync::OnceLock::new(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("lanyard-describe".into())
        .spawn(move || {
            let _ = tx.send(probe.call::<_, Description>(Op::Describe, &serde_json::json!({})));
        })
        .map_err(|e| CallError::BadOutput {
            op: Op::Describe.name(),
            message: format!("cannot start a thread: {e}"),
        })?;
    rx.recv_timeout(DESCRIBE_LIMIT).unwrap_or_else(|_| {
        Err(CallError::Panicked {
            op: Op::Describe.name(),
            message: format!("no answer within {} s", DESCRIBE_LIMIT.as_secs()),
        })
    })
}

/// A loaded provider plugin.
#[derive(Debug)]
pub struct Plugin {
    path: PathBuf,
    table: &'static ProviderTableV1,
    kind: String,
    version: String,
    description: Description,
    /// Calls that overran their time and have not returned since (each holds a thread).
    pub hung: std::sync::atomic::AtomicUsize,
    /// The daemon's metrics, once it runs (its bounded calls are counted there).
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

impl Plugin {
    /// Loads one plugin file with `RTLD_NOW`, checks its ABI version and table size, and asks it
    /// to describe itself.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let path_buf = path.to_path_buf();
        let library = open(path).map_err(|reason| LoadError::Open {
            path: path_buf.clone(),
            reason,
        })?;
        // The library stays loaded for the life of the process: plugin code and its static
        // table must never be unmapped while a pointer into them may exist.
        let library: &'static libloading::Library = Box::leak(Box::new(library));
        // SAFETY: the symbol, if present, has the signature the ABI fixes for it (`EntryFn`);
        // a library that exports the name with another type breaks the ABI's one promise.
        let entry: libloading::Symbol<'static, EntryFn> = unsafe { library.get(ENTRY_SYMBOL) }
            .map_err(|_| LoadError::NotAPlugin {
                path: path_buf.clone(),
            })?;
        // SAFETY: the entry point takes no arguments and returns a pointer to a static table.
        let table_ptr = unsafe { entry() };
        if table_ptr.is_null() {
            return Err(LoadError::NotAPlugin { path: path_buf });
        }
        // SAFETY: every ABI version starts the table with two u32s, `abi_version` and
        // `table_size`; we read only those two before checking them.
        let (abi_version, table_size) = unsafe {
            let header = table_ptr.cast::<u32>();
            (header.read(), header.add(1).read())
        };
        if abi_version != ABI_VERSION {
            return Err(LoadError::AbiVersion {
                path: path_buf,
                found: abi_version,
            });
        }
        let expected = std::mem::size_of::<ProviderTableV1>();
        if (table_size as usize) < expected {
            return Err(LoadError::TableSize {
                path: path_buf,
                found: table_size,
                expected,
            });
        }
        // SAFETY: version and size match ABI v1, so the pointer is to a full, static v1 table.
        let table: &'static ProviderTableV1 = unsafe { &*table_ptr };
        let kind = abi_str(table.kind).ok_or_else(|| LoadError::BadString {
            path: path_buf.clone(),
            what: "kind",
        })?;
        let version = abi_str(table.plugin_version).ok_or_else(|| LoadError::BadString {
            path: path_buf.clone(),
            what: "version",
        })?;
        let mut plugin = Self {
            path: path_buf.clone(),
            table,
            kind,
            version,
            description: Description::default(),
            hung: std::sync::atomic::AtomicUsize::new(0),
            metrics: std::sync::OnceLock::new(),
        };
        plugin.description = describe(&plugin).map_err(|error| LoadError::Describe {
            path: path_buf,
            error,
        })?;
        plugin.description.kind = plugin.kind.clone();
        Ok(plugin)
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn abi_version(&self) -> u32 {
        self.table.abi_version
    }

    pub fn description(&self) -> &Description {
        &self.description
    }

    /// Runs one operation: JSON in, JSON out. A plugin panic comes back as
    /// [`CallError::Panicked`]; nothing the plugin does can unwind into the daemon.
    pub fn call<I: Serialize, O: DeserializeOwned>(
        &self,
        op: Op,
        input: &I,
    ) -> Result<O, CallError> {
        let input = serde_json::to_vec(input).map_err(|e| CallError::BadInput {
            op: op.name(),
            message: e.to_string(),
        })?;
        self.call_json(op, &input)
    }

    /// Runs one operation on a blocking thread and waits for it at most `limit`: what every
    /// call a request or a configuration change makes goes through (alone, or with others in
    /// [`run_bounded`](Plugin::run_bounded)).
    pub async fn call_bounded<I: Serialize, O: DeserializeOwned + Send + 'static>(
        self: &Arc<Self>,
        op: Op,
        input: &I,
        limit: std::time::Duration,
    ) -> Result<O, BoundedError> {
        let input = serde_json::to_vec(input).map_err(|e| {
            BoundedError::Call(CallError::BadInput {
                op: op.name(),
                message: e.to_string(),
            })
        })?;
        self.run_bounded(limit, move |plugin| plugin.call_json::<O>(op, &input))
            .await
    }

    /// Runs `calls` (one or more operations, in sequence) on a blocking thread and waits for
    /// them at most `limit`. Handing work to a blocking thread and back costs more than a
    /// typical operation, so operations with no I/O between them share one hand-off. Calls
    /// that overrun are abandoned (their thread cannot be stopped): they count in
    /// [`hung`](Plugin::hung) until they return, and a plugin with [`MAX_HUNG_CALLS`] such
    /// calls is not called at all.
    pub async fn run_bounded<O: Send + 'static>(
        self: &Arc<Self>,
        limit: std::time::Duration,
        calls: impl FnOnce(&Plugin) -> Result<O, CallError> + Send + 'static,
    ) -> Result<O, BoundedError> {
        use std::sync::atomic::{AtomicU8, Ordering};
        const RUNNING: u8 = 0;
        const DONE: u8 = 1;
        const ABANDONED: u8 = 2;
        let hung = self.hung.load(Ordering::Relaxed);
        if hung >= MAX_HUNG_CALLS {
            if let Some(metrics) = self.metrics.get() {
                metrics.plugin_call(&self.kind, "disabled", None);
            }
            return Err(BoundedError::Disabled { hung });
        }
        let plugin = self.clone();
        let state = Arc::new(AtomicU8::new(RUNNING));
        let seen = state.clone();
        let task = tokio::task::spawn_blocking(move || {
            let result = calls(&plugin);
            if seen.swap(DONE, Ordering::AcqRel) == ABANDONED {
                plugin.hung.fetch_sub(1, Ordering::Relaxed);
            }
            result
        });
        let began = std::time::Instant::now();
        let outcome = match tokio::time::timeout(limit, task).await {
            Ok(Ok(result)) => result.map_err(BoundedError::Call),
            Ok(Err(_)) => Err(BoundedError::Call(CallError::Panicked {
                op: "(thread)",
                message: "the plugin call's thread failed".into(),
            })),
            Err(_) => {
                if state.swap(ABANDONED, Ordering::AcqRel) == RUNNING {
                    self.hung.fetch_add(1, Ordering::Relaxed);
                }
                Err(BoundedError::Overran)
            }
        };
        if let Some(metrics) = self.metrics.get() {
            let result = match &outcome {
                Ok(_) => "ok",
                Err(BoundedError::Overran) => "overran",
                Err(_) => "error",
            };
            metrics.plugin_call(&self.kind, result, Some(began.elapsed().as_secs_f64()));
        }
        outcome
    }

    /// Counts this plugin's bounded calls in `metrics` from now on.
    pub(crate) fn attach_metrics(&self, metrics: &Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics.clone());
    }

    /// [`call`](Plugin::call) with the input already encoded.
    pub fn call_json<O: DeserializeOwned>(&self, op: Op, input: &[u8]) -> Result<O, CallError> {
        let mut out = AbiBuf::empty();
        // SAFETY: `input` is a live buffer of `input.len()` bytes and `out` a writable AbiBuf,
        // for the whole call, as the ABI requires.
        let code = unsafe { (self.table.call)(op as u32, input.as_ptr(), input.len(), &mut out) };
        let bytes = if out.ptr.is_null() {
            Vec::new()
        } else {
            // SAFETY: the plugin wrote `out` to describe `len` initialised bytes it owns; we
            // copy them before handing the buffer back to the plugin's own `free`.
            let copied = unsafe { std::slice::from_raw_parts(out.ptr, out.len) }.to_vec();
            // SAFETY: `out` came from this plugin's `call` and is freed exactly once.
            unsafe { (self.table.free)(out) };
            copied
        };
        let message = || serde_json::from_slice::<String>(&bytes).unwrap_or_default();
        match Status::from_i32(code) {
            Some(Status::Ok) => serde_json::from_slice(&bytes).map_err(|e| CallError::BadOutput {
                op: op.name(),
                message: e.to_string(),
            }),
            Some(Status::Error) => Err(serde_json::from_slice::<ProviderError>(&bytes)
                .map(CallError::Provider)
                .unwrap_or_else(|e| CallError::BadOutput {
                    op: op.name(),
                    message: e.to_string(),
                })),
            Some(Status::Panic) => Err(CallError::Panicked {
                op: op.name(),
                message: message(),
            }),
            Some(Status::UnknownOp) => Err(CallError::UnknownOp { op: op.name() }),
            Some(Status::BadInput) => Err(CallError::BadInput {
                op: op.name(),
                message: message(),
            }),
            None => Err(CallError::BadOutput {
                op: op.name(),
                message: format!("unknown status {code}"),
            }),
        }
    }
}

fn abi_str(s: AbiStr) -> Option<String> {
    if s.ptr.is_null() {
        return None;
    }
    // SAFETY: the table promises `ptr` points to `len` bytes of static data.
    let bytes = unsafe { std::slice::from_raw_parts(s.ptr, s.len) };
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

#[cfg(unix)]
fn open(path: &Path) -> Result<libloading::Library, String> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // SAFETY: loading a library runs its initialisers; plugins are operator-installed code,
    // and RTLD_NOW makes a library with unresolved symbols fail here rather than mid-call.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
        .map(Into::into)
        .map_err(|e| e.to_string())
}

#[cfg(not(unix))]
fn open(path: &Path) -> Result<libloading::Library, String> {
    // SAFETY: as above; Windows resolves imports at load time.
    unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())
}

/// Whether a file name looks like a Lanyard plugin: `liblanyard_provider_*.so` (or the
/// platform's equivalent).
pub fn is_plugin_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let stem = name
        .strip_prefix(std::env::consts::DLL_PREFIX)
        .unwrap_or(name);
    stem.starts_with("lanyard_provider_")
        && path.extension().and_then(|e| e.to_str()) == Some(std::env::consts::DLL_EXTENSION)
}

/// The plugins found in the plugin directories, by kind.
#[derive(Debug, Default, Clone)]
pub struct PluginSet {
    plugins: BTreeMap<String, Arc<Plugin>>,
    /// Files that looked like plugins but could not be loaded.
    pub errors: Vec<String>,
}

impl PluginSet {
    /// Counts every plugin's bounded calls in `metrics` from now on.
    pub(crate) fn attach_metrics(&self, metrics: &Arc<crate::metrics::Metrics>) {
        for plugin in self.plugins.values() {
            plugin.attach_metrics(metrics);
        }
    }

    /// Loads every plugin file in `dirs`. The first file of a kind wins; bad files are
    /// reported in `errors` and skipped so the rest keep working.
    pub fn scan(dirs: &[PathBuf]) -> Self {
        let mut set = Self::default();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_plugin_file(p))
                .collect();
            files.sort();
            for file in files {
                match Plugin::load(&file) {
                    Ok(plugin) => {
                        if set.plugins.contains_key(plugin.kind()) {
                            tracing::debug!(path = %file.display(), kind = plugin.kind(),
                                "plugin kind already loaded from an earlier file; skipped");
                            continue;
                        }
                        tracing::info!(path = %file.display(), kind = plugin.kind(),
                            version = plugin.version(), "loaded provider plugin");
                        set.plugins
                            .insert(plugin.kind().to_owned(), Arc::new(plugin));
                    }
                    Err(error) => {
                        tracing::error!(%error, "skipped a plugin file");
                        set.errors.push(error.to_string());
                    }
                }
            }
        }
        set
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.plugins.keys().map(String::as_str)
    }
}
