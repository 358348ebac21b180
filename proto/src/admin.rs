//! The admin commands' bodies: provider instances (`admin.provider.*`) and
//! `admin.keys.rotate`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `admin.provider.delete` / `admin.provider.get`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderIdRequest {
    pub id: String,
}

/// An instance as admin replies show it: its config, the secret masked, and bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderView {
    #[serde(flatten)]
    pub config: Map<String, Value>,
    /// `config` (from the config file, read-only here) or `admin`.
    pub source: String,
    pub version: u64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderReply {
    pub provider: ProviderView,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderListReply {
    pub providers: Vec<ProviderView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateKeysReply {
    pub kid: String,
}
