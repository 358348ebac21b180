//! The JetStream store's notes of the NATS connections the auth callout admitted: the
//! `nats_connections` bucket, keyed `{family}.{server_id}.{cid}` (the family in base64url;
//! a server id is an nkey, already a subject token) so one family's notes are one scan.
//! Notes are useless once their connection's user JWT expired: the bucket forgets them
//! after [`CONNECTION_NOTE_AGE`], which bounds how long a connection may be admitted for.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::JetStreamStore;
use crate::store::{NatsConnection, StoreResult};

/// How long the bucket keeps a note.
pub const CONNECTION_NOTE_AGE: Duration =
    Duration::from_secs(crate::store::NATS_CONNECTION_MAX_SECS as u64);

fn family_prefix(family_id: &str) -> String {
    format!("{}.", URL_SAFE_NO_PAD.encode(family_id))
}

fn note_key(family_id: &str, connection: &NatsConnection) -> String {
    format!(
        "{}{}.{}",
        family_prefix(family_id),
        connection.server_id,
        connection.cid
    )
}

impl JetStreamStore {
    pub(super) async fn put_connection(
        &self,
        family_id: &str,
        connection: &NatsConnection,
    ) -> StoreResult<()> {
        self.nats_connections
            .put_raw(&note_key(family_id, connection), connection)
            .await
    }

    /// Purged, not deleted: a delete marker would keep the family's id in a subject.
    pub(super) async fn delete_connection(
        &self,
        family_id: &str,
        connection: &NatsConnection,
    ) -> StoreResult<()> {
        self.nats_connections
            .erase_raw(&note_key(family_id, connection))
            .await
    }

    pub(super) async fn connections_of(
        &self,
        family_id: &str,
        now: i64,
    ) -> StoreResult<Vec<NatsConnection>> {
        let mut out = Vec::new();
        for (_, value) in self
            .nats_connections
            .scan(&family_prefix(family_id), true)
            .await?
        {
            let connection: NatsConnection = crate::store::decode(&value)?;
            if connection.expires_at >= now {
                out.push(connection);
            }
        }
        Ok(out)
    }

    /// Purges every note of the family; returns the unexpired ones.
    pub(super) async fn erase_connections(
        &self,
        family_id: &str,
        now: i64,
    ) -> StoreResult<Vec<NatsConnection>> {
        let live = self.connections_of(family_id, now).await?;
        let every = format!("{}>", family_prefix(family_id));
        self.nats_connections.erase_raw(&every).await?;
        Ok(live)
    }
}
