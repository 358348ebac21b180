//! The store's login records: spent login states, and the previous version's pending logins.

use lanyard::store::{new_state, PendingLogin, StoreError};

use super::Backend;

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

pub(super) async fn a_login_state_is_spent_once(b: Backend) {
    let spenders = (0..20).map(|_| {
        let store = b.store.clone();
        tokio::spawn(async move { store.spend_login(&[7; 16], 4_000_000_000).await.unwrap() })
    });
    let spent = futures::future::join_all(spenders)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(
        spent, 1,
        "exactly one of 20 racing callbacks spends a state"
    );
    assert!(!b.store.spend_login(&[7; 16], 4_000_000_000).await.unwrap());
    assert!(b.store.spend_login(&[8; 16], 4_000_000_000).await.unwrap());
    b.store.sweep_logins(1_000).await.unwrap();
    assert!(
        !b.store.spend_login(&[7; 16], 4_000_000_000).await.unwrap(),
        "a mark stays until its state expires"
    );
}

/// What the previous version wrote at each login start still finishes, once, and its tree or
/// bucket goes when the operator says so, and only when none of them can finish any more.
pub(super) async fn a_previous_versions_pending_login_is_taken_once_and_stored_hashed(b: Backend) {
    let state = new_state(4_000_000_000, [7; 32]);
    b.store
        .put_pending(&state, &pending(4_000_000_000))
        .await
        .unwrap();
    let expired = new_state(100, [9; 32]);
    b.store.put_pending(&expired, &pending(100)).await.unwrap();
    for (path, bytes) in lanyard_tests::files_under(&b.dirs) {
        assert!(
            !bytes.windows(state.len()).any(|w| w == state.as_bytes()),
            "{} holds a usable state",
            path.display()
        );
    }
    assert!(b.store.take_pending("not-a-state").await.unwrap().is_none());
    let forged = new_state(4_000_000_000, [8; 32]);
    assert!(b.store.take_pending(&forged).await.unwrap().is_none());
    b.store.sweep_logins(1_000).await.unwrap();
    assert!(
        matches!(
            b.store.forget_previous_logins(1_000).await,
            Err(StoreError::Conflict(_))
        ),
        "not while one may still finish"
    );
    let takers = (0..20).map(|_| {
        let store = b.store.clone();
        let state = state.clone();
        tokio::spawn(async move { store.take_pending(&state).await.unwrap() })
    });
    let taken = futures::future::join_all(takers)
        .await
        .into_iter()
        .filter(|r| r.as_ref().unwrap().is_some())
        .count();
    assert_eq!(taken, 1, "exactly one of 20 racing callers takes a state");
    // Once every one of them was taken or expired, they can go.
    b.store.sweep_logins(4_100_000_000).await.unwrap();
    b.store.forget_previous_logins(4_100_000_000).await.unwrap();
    assert!(b.store.take_pending(&expired).await.unwrap().is_none());
    assert_eq!(
        b.store.forget_previous_logins(4_100_000_000).await.unwrap(),
        0,
        "nothing left"
    );
}

/// A login an app waits for: created once, ended exactly once of many racing ends (the first outcome
/// stays), a watcher woken by the end, and forgotten (sled's sweep) once it may be.
pub(super) async fn a_waited_login_ends_once_and_wakes_its_watchers(b: Backend) {
    use futures::StreamExt;
    use lanyard::crypto::Sealed;
    use lanyard::store::{LoginOutcome, WaitedKind, WaitedLogin};
    let record = WaitedLogin {
        kind: WaitedKind::Device,
        provider: "oidc".into(),
        generation: "config".into(),
        sealed: Sealed {
            kid: "k".into(),
            nonce: "n".into(),
            ciphertext: "c".into(),
        },
        expires_at: 100,
        fetch_groups: false,
        outcome: None,
    };
    b.store.put_waited_login("dev1", &record).await.unwrap();
    assert!(matches!(
        b.store.put_waited_login("dev1", &record).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        b.store.waited_login("dev1").await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(b.store.waited_login("dev2").await.unwrap(), None);

    let mut watch = b.store.watch_waited_login("dev1").await.unwrap();
    let enders = (0..8).map(|i| {
        let store = b.store.clone();
        tokio::spawn(async move {
            let outcome = LoginOutcome::Failed {
                code: lanyard_proto::ErrorCode::AccessDenied,
                message: format!("ender {i}"),
                at: 50,
            };
            store.end_waited_login("dev1", &outcome).await.unwrap()
        })
    });
    let ended = futures::future::join_all(enders)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(ended, 1, "exactly one of 8 racing ends wins");
    tokio::time::timeout(lanyard_tests::PATIENCE, watch.next())
        .await
        .expect("the watch wakes at the end")
        .expect("the watch is still open");
    let stored = b.store.waited_login("dev1").await.unwrap().unwrap();
    let Some(LoginOutcome::Failed { message, .. }) = &stored.outcome else {
        panic!("{stored:?}");
    };
    assert!(message.starts_with("ender "));
    assert_eq!(stored.forget_after(), 100 + 600);
    // An unknown login cannot be ended.
    let done = LoginOutcome::Failed {
        code: lanyard_proto::ErrorCode::AccessDenied,
        message: String::new(),
        at: 1,
    };
    assert!(!b.store.end_waited_login("dev2", &done).await.unwrap());
    // Kept until it may be forgotten; sled's sweep removes it after (JetStream's bucket
    // forgets it by age).
    b.store.sweep_logins(700).await.unwrap();
    assert!(b.store.waited_login("dev1").await.unwrap().is_some());
    if b._nats.is_none() {
        b.store.sweep_logins(701).await.unwrap();
        assert!(b.store.waited_login("dev1").await.unwrap().is_none());
    }
}
