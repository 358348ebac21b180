//! The sled store's notes of the NATS connections the auth callout admitted: the
//! `nats_connections` tree, keyed `{family}\0{server_id}\0{cid}` (the cid 8 bytes
//! big-endian) so one family's notes are one prefix scan.

use super::tx::{backend, decode, encode};
use super::SledStore;
use crate::store::{NatsConnection, StoreResult};

/// The key of `connection`'s note under family `family_id`.
pub(super) fn connection_key(family_id: &str, connection: &NatsConnection) -> Vec<u8> {
    let mut key = format!("{family_id}\0{}\0", connection.server_id).into_bytes();
    key.extend_from_slice(&connection.cid.to_be_bytes());
    key
}

impl SledStore {
    pub(super) fn put_connection(
        &self,
        family_id: &str,
        connection: &NatsConnection,
    ) -> StoreResult<()> {
        self.nats_connections
            .insert(connection_key(family_id, connection), encode(connection)?)
            .map_err(backend)?;
        Ok(())
    }

    pub(super) fn delete_connection(
        &self,
        family_id: &str,
        connection: &NatsConnection,
    ) -> StoreResult<()> {
        self.nats_connections
            .remove(connection_key(family_id, connection))
            .map_err(backend)?;
        Ok(())
    }

    /// Every note of family `family_id`, expired or not, with its key.
    pub(super) fn connections_of(
        &self,
        family_id: &str,
    ) -> StoreResult<Vec<(sled::IVec, NatsConnection)>> {
        self.nats_connections
            .scan_prefix(format!("{family_id}\0").as_bytes())
            .map(|entry| {
                let (key, value) = entry.map_err(backend)?;
                Ok((key, decode(&value)?))
            })
            .collect()
    }

    /// Deletes the notes that expired before `now`: the whole tree is read, which holds no
    /// more than the connections admitted within one access token's lifetime.
    pub(super) fn sweep_connections(&self, now: i64) -> StoreResult<usize> {
        let mut swept = 0;
        for entry in self.nats_connections.iter() {
            let (key, value) = entry.map_err(backend)?;
            let connection: NatsConnection = decode(&value)?;
            if connection.expires_at < now {
                self.nats_connections.remove(key).map_err(backend)?;
                swept += 1;
            }
        }
        Ok(swept)
    }
}
