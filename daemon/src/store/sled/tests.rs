use super::*;
use crate::store::new_state;
use lanyard_provider_sdk::Profile;

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

fn login(subject: &str, email: &str) -> LoginWrite {
    LoginWrite {
        provider: "oidc".into(),
        profile: Profile {
            subject: subject.into(),
            email: Some(email.into()),
            email_verified: true,
            ..Profile::default()
        },
        trust_email_verified: false,
        link_user: None,
        tokens: None,
        session_key: format!("session-{subject}"),
        session: SessionRecord {
            user_id: String::new(),
            family_id: format!("ses_{subject}"),
            created_at: 0,
            expires_at: 10,
            used_at: None,
        },
        now: 1,
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
async fn imported_users_log_in_as_returning_users() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let user = UserRecord {
        id: "usr_imported".into(),
        username: "x".into(),
        email: Some("X@example.test".into()),
        email_verified: true,
        name: None,
        picture: None,
        created_at: 1,
    };
    let identity = IdentityRecord {
        provider: "oidc".into(),
        subject: "a".into(),
        user_id: user.id.clone(),
        email: user.email.clone(),
        email_verified: true,
        groups: vec![],
        created_at: 1,
        updated_at: 1,
    };
    store
        .import_users(&[(user.clone(), vec![identity.clone()])])
        .await
        .unwrap();
    assert_eq!(store.get_user("usr_imported").await.unwrap(), Some(user));
    assert_eq!(
        store.user_identities("usr_imported").await.unwrap(),
        vec![identity]
    );
    let commit = store
        .commit_login(&login("a", "x@example.test"))
        .await
        .unwrap();
    assert!(!commit.new_user && !commit.new_identity);
    assert_eq!(commit.user.id, "usr_imported");
    // The email index came along too: another identity with that email is refused.
    let other = store.commit_login(&login("b", "x@example.test")).await;
    assert!(matches!(other, Err(StoreError::AccountExists)));
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
async fn a_state_is_taken_once_and_stored_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let state = new_state(100, [7; 32]);
    store.put_pending(&state, &pending(100)).await.unwrap();
    let (key, _) = store.pending.first().unwrap().unwrap();
    assert!(
        !key.windows(32).any(|w| w == [7; 32]),
        "the state's random part is not in the key"
    );
    assert!(store.take_pending("not-a-state").await.unwrap().is_none());
    let forged = new_state(100, [8; 32]);
    assert!(store.take_pending(&forged).await.unwrap().is_none());
    let takers = (0..20).map(|_| {
        let store = store.clone();
        let state = state.clone();
        tokio::spawn(async move { store.take_pending(&state).await.unwrap() })
    });
    let taken = futures::future::join_all(takers)
        .await
        .into_iter()
        .filter(|r| r.as_ref().unwrap().is_some())
        .count();
    assert_eq!(taken, 1);
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

#[tokio::test]
async fn a_refused_login_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let first = store
        .commit_login(&login("a", "x@example.test"))
        .await
        .unwrap();
    assert!(first.new_user);
    let sessions_before = store.sessions.len();
    let refused = store.commit_login(&login("b", "X@example.test")).await;
    assert!(matches!(refused, Err(StoreError::AccountExists)));
    assert_eq!(
        store.sessions.len(),
        sessions_before,
        "no session for a refused login"
    );
    assert!(store.identities.get("oidc\0b").unwrap().is_none());
    assert_eq!(store.users.len(), 1);
    let session = store.get_session("session-a").await.unwrap().unwrap();
    assert_eq!(session.user_id, first.user.id);
}

fn key(kid: &str) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.into(),
        private: crate::vault::Vault::from_key_bytes(&[1; 32])
            .seal(b"k", "test")
            .unwrap(),
        public_key: String::new(),
        created_at: 0,
        retired_at: None,
    }
}

#[tokio::test]
async fn the_first_signing_key_wins_and_rotation_retires_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.signing_keys(key("one")).await.unwrap()[0].kid, "one");
    assert_eq!(store.signing_keys(key("two")).await.unwrap().len(), 1);
    let (revision, keys) = store.rotate_signing_key(key("three"), 42).await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].retired_at, Some(42));
    assert_eq!((keys[1].kid.as_str(), keys[1].retired_at), ("three", None));
    assert_eq!(
        store.current_signing_keys().await.unwrap(),
        (revision, keys)
    );
}

fn provider(id: &str, version: u64) -> ProviderRecord {
    ProviderRecord {
        config: serde_json::from_value(serde_json::json!({
            "id": id,
            "kind": "oidc",
            "client_id": "c",
            "redirect_uris": ["https://app.test/cb"],
        }))
        .unwrap(),
        secret: None,
        generation: format!("gen-{id}"),
        version,
        created_at: 0,
        updated_at: 0,
    }
}

/// The change feed starts with what is stored, then reports every change with a
/// revision that grows per record, also across a delete and a re-create.
#[tokio::test]
async fn the_feed_reports_a_snapshot_then_every_shared_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store.signing_keys(key("one")).await.unwrap();
    let first = store.put_provider(&provider("a", 1), None).await.unwrap();
    let mut feed = store.follow().await.unwrap();
    let Some(FeedEvent::Snapshot(snapshot)) = feed.recv().await else {
        panic!("a snapshot first");
    };
    assert_eq!(snapshot.providers.len(), 1);
    assert_eq!(snapshot.providers[0].0, first);
    assert_eq!(snapshot.signing_keys.as_ref().unwrap().1[0].kid, "one");

    let updated = store
        .put_provider(&provider("a", 2), Some(1))
        .await
        .unwrap();
    let deleted = store.delete_provider("a", 2).await.unwrap();
    let again = store.put_provider(&provider("a", 1), None).await.unwrap();
    let (rotated, _) = store.rotate_signing_key(key("two"), 7).await.unwrap();
    assert!(first < updated && updated < deleted && deleted < again);
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match feed.recv().await.unwrap() {
            FeedEvent::Provider { id, revision, .. } => {
                assert_eq!(id, "a");
                seen.push(revision);
            }
            FeedEvent::SigningKeys { revision, keys } => {
                assert_eq!(revision, rotated);
                assert_eq!(keys.len(), 2);
                seen.push(revision);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, vec![updated, deleted, again, rotated]);
    // A stale version is refused and reports nothing.
    assert!(matches!(
        store.put_provider(&provider("a", 5), Some(3)).await,
        Err(StoreError::Conflict(_))
    ));
    // Closed, the feed's task lets go of the database.
    feed.close().await;
    drop(store);
    SledStore::open(dir.path()).unwrap();
}

#[tokio::test]
async fn a_reused_refresh_token_revokes_its_family() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let commit = store
        .commit_login(&login("a", "a@example.test"))
        .await
        .unwrap();
    let rotated = store
        .rotate_session("session-a", "second", 2, 100)
        .await
        .unwrap();
    assert_eq!(
        rotated,
        Rotation::Rotated {
            user_id: commit.user.id.clone(),
            family_id: "ses_a".into()
        }
    );
    let replay = store
        .rotate_session("session-a", "third", 3, 100)
        .await
        .unwrap();
    assert!(matches!(replay, Rotation::Reused { .. }));
    // The family is gone for the honest holder too.
    let honest = store
        .rotate_session("second", "fourth", 4, 100)
        .await
        .unwrap();
    assert_eq!(honest, Rotation::Refused);
    let family = store.get_family("ses_a").await.unwrap().unwrap();
    assert_eq!(family.revoked_at, Some(3));
}
