//! The sled store's own behaviour (group commit, locks, sweeping); the rules both backends
//! share are the conformance suite's (`tests/it/store.rs`).

use super::*;
use crate::store::new_state;

fn pending(expires_at: i64) -> PendingLogin {
    PendingLogin {
        provider: "oidc".into(),
        generation: "config".into(),
        redirect_uri: "https://app.test/cb".into(),
        pkce_verifier: Some("verifier".into()),
        nonce: Some("nonce".into()),
        scopes: vec!["openid".into()],
        fetch_groups: false,
        return_to: None,
        link_user: None,
        created_at: 0,
        expires_at,
    }
}

#[tokio::test]
async fn concurrent_writers_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let writes = (0..64u8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .put_pending(&new_state(100, [i; 32]), &pending(100))
                .await
        })
    });
    for write in futures::future::join_all(writes).await {
        write.unwrap().unwrap();
    }
    assert!(
        store.flush_count() < 64,
        "{} flushes for 64 writes",
        store.flush_count()
    );
    assert!(store.flush_count() >= 1);
}

#[tokio::test]
async fn a_dropped_store_can_be_reopened_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20u8 {
        let store = SledStore::open(dir.path()).unwrap();
        let state = new_state(100, [round; 32]);
        store.put_pending(&state, &pending(100)).await.unwrap();
        // The flush thread holds the database too; dropping the store must close it.
        drop(store);
        let reopened = SledStore::open(dir.path()).expect("the lock was released");
        assert!(reopened.take_pending(&state).await.unwrap().is_some());
    }
}

#[tokio::test]
async fn sweep_removes_only_expired_logins() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (old, edge, new) = (
        new_state(5, [1; 32]),
        new_state(50, [2; 32]),
        new_state(100, [3; 32]),
    );
    store.put_pending(&old, &pending(5)).await.unwrap();
    store.put_pending(&edge, &pending(50)).await.unwrap();
    store.put_pending(&new, &pending(100)).await.unwrap();
    assert_eq!(store.sweep_pending(50).await.unwrap(), 1);
    assert!(store.take_pending(&old).await.unwrap().is_none());
    assert!(
        store.take_pending(&edge).await.unwrap().is_some(),
        "expires at 50, not before"
    );
    assert!(store.take_pending(&new).await.unwrap().is_some());
}

/// A closed change feed lets go of the database (its task holds a subscription): the store
/// opens again at once. What the feed reports is the conformance suite's
/// (`tests/it/store.rs`), which runs against both backends.
#[tokio::test]
async fn a_closed_feed_lets_go_of_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut feed = store.follow().await.unwrap();
    assert!(matches!(feed.recv().await, Some(FeedEvent::Snapshot(_))));
    feed.close().await;
    drop(store);
    SledStore::open(dir.path()).unwrap();
}
