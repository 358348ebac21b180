//! The sled store's own behaviour (group commit, locks, sweeping); the rules both backends
//! share are the conformance suite's (`tests/it/store/`).

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
        binding_hash: None,
    }
}

#[tokio::test]
async fn concurrent_writers_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let writes = (0..64u8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.spend_login(&[i; 16], 100).await })
    });
    for write in futures::future::join_all(writes).await {
        assert!(write.unwrap().unwrap(), "each id is spent once");
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
async fn sweep_removes_only_expired_logins_then_the_previous_versions_tree() {
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
    assert!(store.spend_login(&[1; 16], 5).await.unwrap());
    assert!(store.spend_login(&[2; 16], 100).await.unwrap());
    assert_eq!(store.sweep_logins(50).await.unwrap(), 2);
    assert!(store.take_pending(&old).await.unwrap().is_none());
    assert!(
        store.take_pending(&edge).await.unwrap().is_some(),
        "expires at 50, not before"
    );
    assert!(
        !store.spend_login(&[2; 16], 100).await.unwrap(),
        "an unexpired mark stays"
    );
    assert!(
        store.spend_login(&[1; 16], 5).await.unwrap(),
        "an expired mark is forgotten (its state is refused by its expiry)"
    );
    let tree_names = |store: &SledStore| store.db.tree_names();
    assert!(tree_names(&store).iter().any(|n| n == PENDING));
    store.sweep_logins(150).await.unwrap();
    assert!(
        !tree_names(&store).iter().any(|n| n == PENDING),
        "no pending login of the previous version left: its tree goes"
    );
    assert!(store.take_pending(&new).await.unwrap().is_none());
    drop(store);
    let reopened = SledStore::open(dir.path()).unwrap();
    assert!(
        !tree_names(&reopened).iter().any(|n| n == PENDING),
        "and is not made again"
    );
}

/// A closed change feed lets go of the database (its task holds a subscription): the store
/// opens again at once. What the feed reports is the conformance suite's
/// (`tests/it/store/`), which runs against both backends.
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
