//! The sled store's side of the change feed: the `revisions` tree, where every change to a
//! shared record is tracked in the transaction that makes it.

use serde::Serialize;
use sled::transaction::TransactionalTree;

use super::tx::{backend, decode, get, tx_get, tx_put, TxResult};
use super::{SledStore, SIGNING_KEYS};
use crate::store::{
    FeedEvent, ProviderRecord, Revision, SharedKey, SharedSnapshot, SigningKeyRecord, StoreError,
    StoreResult,
};

/// The key of a shared record in the revisions tree.
pub(super) fn revision_key(key: &SharedKey) -> Vec<u8> {
    match key {
        SharedKey::Provider(id) => format!("provider\0{id}").into_bytes(),
        SharedKey::SigningKeys => SIGNING_KEYS.to_vec(),
    }
}

/// A shared record's entry in the revisions tree: how many changes it has seen and what it
/// is now. The change feed reads these entries alone, so it never waits on another tree
/// while a writer (which fills the subscription sled delivers them through) waits on it.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Tracked {
    Provider {
        seq: u64,
        record: Option<Box<ProviderRecord>>,
    },
    SigningKeys {
        seq: u64,
        keys: Vec<SigningKeyRecord>,
    },
}

impl Tracked {
    fn seq(&self) -> u64 {
        match self {
            Tracked::Provider { seq, .. } | Tracked::SigningKeys { seq, .. } => *seq,
        }
    }

    /// The feed event this entry reports, for record `key` (its key in the tree).
    pub(super) fn event(self, key: &[u8]) -> Option<FeedEvent> {
        match self {
            Tracked::SigningKeys { seq, keys } => Some(FeedEvent::SigningKeys {
                revision: sled_revision(seq),
                keys,
            }),
            Tracked::Provider { seq, record } => {
                let id = key.strip_prefix(b"provider\0")?;
                Some(FeedEvent::Provider {
                    id: String::from_utf8_lossy(id).into_owned(),
                    revision: sled_revision(seq),
                    record,
                })
            }
        }
    }
}

/// A sled store's revisions count in one epoch: the store is never re-created under a
/// running daemon.
pub(super) const fn sled_revision(seq: u64) -> Revision {
    Revision::new(0, seq)
}

/// Records a change of a shared record inside the transaction that makes it: its next
/// revision and what it is now (`change` builds the entry from the revision's count).
pub(super) fn track(
    revisions: &TransactionalTree,
    key: &SharedKey,
    change: impl FnOnce(u64) -> Tracked,
) -> TxResult<Revision> {
    let key = revision_key(key);
    let seq = tx_get::<Tracked>(revisions, &key)
        .ok()
        .flatten()
        .map_or(0, |tracked| tracked.seq())
        + 1;
    tx_put(revisions, &key, &change(seq))?;
    Ok(sled_revision(seq))
}

impl SledStore {
    pub(super) fn revision(&self, key: &SharedKey) -> StoreResult<Revision> {
        let seq = get::<Tracked>(&self.revisions, &revision_key(key))?.map_or(0, |t| t.seq());
        Ok(sled_revision(seq))
    }

    pub(super) fn shared_snapshot(&self) -> StoreResult<SharedSnapshot> {
        let mut providers = Vec::new();
        for entry in self.providers.iter() {
            let (_, value) = entry.map_err(backend)?;
            let record: ProviderRecord = decode(&value)?;
            let revision = self.revision(&SharedKey::Provider(record.config.id.clone()))?;
            providers.push((revision, record));
        }
        let signing_keys = get::<Vec<SigningKeyRecord>>(&self.meta, SIGNING_KEYS)?
            .map(|keys| Ok::<_, StoreError>((self.revision(&SharedKey::SigningKeys)?, keys)))
            .transpose()?;
        Ok(SharedSnapshot {
            providers,
            signing_keys,
        })
    }
}
