//! The store's users' lives: refresh within the reuse grace, a user's session families,
//! disabling, finding users, and the profile a returning login refreshes. Erasure has its
//! own file (`erasure.rs`).

use lanyard::store::{RefreshTerms, Rotation, StoreError};

use super::{login, strict, Backend};

/// Terms of a refresh to `successor` at `now` with a reuse grace of `grace_secs`.
fn graced(successor: &str, now: i64, grace_secs: i64) -> RefreshTerms {
    RefreshTerms {
        candidates: vec![successor.to_owned(), format!("{successor}-by-an-older-key")],
        now,
        expires_at: 100,
        grace_secs,
    }
}

/// Long because it walks one token through the whole window: racing refreshes, a repeat,
/// the successor's own rotation, then the reuse after the grace.
pub(super) async fn a_reuse_within_the_grace_answers_the_same_successor(b: Backend) {
    let commit = b
        .store
        .commit_login(&login("a", "a@example.test"))
        .await
        .unwrap();
    let user_id = commit.user.id;
    // Two tabs refresh the same token at once: one rotates, the others get its successor.
    let racers = (0..8).map(|_| {
        let store = b.store.clone();
        tokio::spawn(async move {
            store
                .rotate_session("session-a", &graced("second", 2, 5))
                .await
                .unwrap()
        })
    });
    let outcomes = futures::future::join_all(racers).await;
    let rotated = outcomes
        .iter()
        .filter(|o| matches!(o.as_ref().unwrap(), Rotation::Rotated { .. }))
        .count();
    assert_eq!(rotated, 1, "{outcomes:?}");
    for outcome in outcomes {
        let outcome = outcome.unwrap();
        assert!(
            matches!(
                &outcome,
                Rotation::Rotated { .. } | Rotation::Repeated { index: 0, .. }
            ),
            "{outcome:?}"
        );
    }
    // Later within the grace: the same successor again, and the family stays.
    let again = b
        .store
        .rotate_session("session-a", &graced("second", 6, 5))
        .await
        .unwrap();
    assert_eq!(
        again,
        Rotation::Repeated {
            user_id: user_id.clone(),
            family_id: "ses_a".into(),
            index: 0
        }
    );
    let family = b.store.get_family("ses_a").await.unwrap().unwrap();
    assert_eq!(family.revoked_at, None);
    assert_eq!(
        (family.refreshed_at, family.expires_at),
        (Some(2), Some(100))
    );
    // The successor works, once.
    let next = b
        .store
        .rotate_session("second", &strict("third", 8, 100))
        .await
        .unwrap();
    assert!(matches!(next, Rotation::Rotated { .. }), "{next:?}");
    // After the grace, the first token revokes the family.
    let late = b
        .store
        .rotate_session("session-a", &graced("second", 7, 5))
        .await
        .unwrap();
    assert_eq!(
        late,
        Rotation::Reused {
            user_id,
            family_id: "ses_a".into()
        }
    );
    let family = b.store.get_family("ses_a").await.unwrap().unwrap();
    assert_eq!(family.revoked_at, Some(7));
    let after = b
        .store
        .rotate_session("third", &graced("fourth", 8, 5))
        .await;
    assert_eq!(after.unwrap(), Rotation::Refused);
}

pub(super) async fn a_users_sessions_are_listed_and_revoked_one_by_one(b: Backend) {
    let first = b
        .store
        .commit_login(&lanyard::store::LoginWrite {
            client: Some("Firefox on Linux".into()),
            ..login("a", "a@example.test")
        })
        .await
        .unwrap();
    let mut again = login("a", "a@example.test");
    again.session_key = "session-a2".into();
    again.session.family_id = "ses_a2".into();
    again.now = 2;
    b.store.commit_login(&again).await.unwrap();
    b.store
        .commit_login(&login("b", "b@example.test"))
        .await
        .unwrap();
    let user_id = first.user.id;
    let families = b.store.user_families(&user_id).await.unwrap();
    let ids: Vec<_> = families.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["ses_a", "ses_a2"]);
    let (_, family) = &families[0];
    assert_eq!(family.provider.as_deref(), Some("oidc"));
    assert_eq!(family.client.as_deref(), Some("Firefox on Linux"));
    assert_eq!(family.first.as_deref(), Some("session-a"));
    assert_eq!(family.expires_at, Some(10));

    // Another user's session is not this user's to revoke.
    assert!(!b
        .store
        .revoke_family("usr_other", "ses_a", 3)
        .await
        .unwrap());
    assert!(b.store.revoke_family(&user_id, "ses_a", 3).await.unwrap());
    assert!(!b.store.revoke_family(&user_id, "ses_a", 4).await.unwrap());
    assert!(!b
        .store
        .revoke_family(&user_id, "ses_none", 4)
        .await
        .unwrap());
    let refused = b
        .store
        .rotate_session("session-a", &strict("x", 5, 100))
        .await;
    assert_eq!(refused.unwrap(), Rotation::Refused);
    let live = b
        .store
        .rotate_session("session-a2", &strict("y", 5, 100))
        .await;
    assert!(matches!(live.unwrap(), Rotation::Rotated { .. }));
}

pub(super) async fn a_disabled_user_neither_logs_in_nor_refreshes_until_enabled(b: Backend) {
    let commit = b
        .store
        .commit_login(&login("a", "a@example.test"))
        .await
        .unwrap();
    let user_id = commit.user.id;
    let disabled = b.store.set_user_disabled(&user_id, Some(3)).await.unwrap();
    assert_eq!(disabled.unwrap().disabled_at, Some(3));
    let again = b.store.set_user_disabled(&user_id, Some(4)).await.unwrap();
    assert_eq!(again.unwrap().disabled_at, Some(3), "the first time stays");
    let mut relogin = login("a", "a@example.test");
    relogin.session_key = "session-a2".into();
    relogin.session.family_id = "ses_a2".into();
    let refused = b.store.commit_login(&relogin).await;
    assert!(matches!(refused, Err(StoreError::Disabled)), "{refused:?}");
    assert!(b.store.get_family("ses_a2").await.unwrap().is_none());
    let refresh = b
        .store
        .rotate_session("session-a", &strict("next", 5, 100))
        .await;
    assert_eq!(refresh.unwrap(), Rotation::Refused);

    let enabled = b.store.set_user_disabled(&user_id, None).await.unwrap();
    assert_eq!(enabled.unwrap().disabled_at, None);
    b.store.commit_login(&relogin).await.unwrap();
    let refresh = b
        .store
        .rotate_session("session-a", &strict("next", 5, 100))
        .await;
    assert!(matches!(refresh.unwrap(), Rotation::Rotated { .. }));
    assert!(b
        .store
        .set_user_disabled("usr_none", Some(1))
        .await
        .unwrap()
        .is_none());
}

/// Long because paging, each filter and the sparse filter's budget share one population.
pub(super) async fn users_are_listed_in_pages_and_found_by_email_username_or_provider(b: Backend) {
    use lanyard::store::UserQuery;
    let mut ids = Vec::new();
    for i in 0..22 {
        let commit = b
            .store
            .commit_login(&login(&format!("u{i}"), &format!("user{i}@example.test")))
            .await
            .unwrap();
        ids.push(commit.user.id);
    }
    let github = lanyard::store::LoginWrite {
        provider: "github".into(),
        ..login("gh", "octo@example.test")
    };
    let octo = b.store.commit_login(&github).await.unwrap().user;
    ids.push(octo.id.clone());
    ids.sort();

    // Every user once, in id order, five at a time.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = b
            .store
            .list_users(&UserQuery {
                after: after.clone(),
                limit: 5,
                ..UserQuery::default()
            })
            .await
            .unwrap();
        assert!(page.users.len() <= 5);
        seen.extend(page.users.into_iter().map(|u| u.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    let one = |query: UserQuery| {
        let store = b.store.clone();
        async move {
            let page = store.list_users(&query).await.unwrap();
            assert_eq!(page.next, None);
            page.users.into_iter().map(|u| u.id).collect::<Vec<_>>()
        }
    };
    let by_email = UserQuery {
        email: Some("OCTO@example.test".into()),
        limit: 10,
        ..UserQuery::default()
    };
    assert_eq!(one(by_email).await, std::slice::from_ref(&octo.id));
    let by_username = UserQuery {
        username: Some(octo.username.clone()),
        limit: 10,
        ..UserQuery::default()
    };
    assert_eq!(one(by_username).await, std::slice::from_ref(&octo.id));
    let nobody = UserQuery {
        email: Some("nobody@example.test".into()),
        limit: 10,
        ..UserQuery::default()
    };
    assert!(one(nobody).await.is_empty());
    let mismatch = UserQuery {
        email: Some("octo@example.test".into()),
        provider: Some("oidc".into()),
        limit: 10,
        ..UserQuery::default()
    };
    assert!(one(mismatch).await.is_empty(), "every filter must match");

    // A sparse filter: a page examines at most 20 users per user it may return, then ends
    // with a cursor; following the cursors finds the match.
    let mut found = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        pages += 1;
        let page = b
            .store
            .list_users(&UserQuery {
                after: after.clone(),
                limit: 1,
                provider: Some("github".into()),
                ..UserQuery::default()
            })
            .await
            .unwrap();
        found.extend(page.users.into_iter().map(|u| u.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(found, [octo.id]);
    assert!(
        pages >= 2,
        "23 users to examine take more than one page of 20"
    );
}

/// Long because each step of the profile's story depends on the one before (the claim a
/// move made is the one the next step finds held).
pub(super) async fn a_returning_login_refreshes_the_profile_and_moves_a_verified_email(b: Backend) {
    use lanyard::store::LoginWrite;
    let again = |email: &str, verified: bool, key: &str| {
        let mut write = login("ret", email);
        write.profile.email_verified = verified;
        write.session_key = format!("session-{key}");
        write.session.family_id = format!("ses_{key}");
        write
    };
    let first = b
        .store
        .commit_login(&again("ret@old.test", true, "1"))
        .await
        .unwrap();
    assert!(first.changed.is_empty());
    let user_id = first.user.id;

    // Nothing new: nothing changed.
    let same = b
        .store
        .commit_login(&again("ret@old.test", true, "2"))
        .await
        .unwrap();
    assert!(same.changed.is_empty(), "{:?}", same.changed);

    // A new name, picture, groups and a verified new address.
    let mut moved = again("Ret@New.test", true, "3");
    moved.profile.name = Some("Ret Urner".into());
    moved.profile.picture = Some("https://pic.test/r".into());
    moved.profile.groups = vec!["g".into()];
    let commit = b.store.commit_login(&moved).await.unwrap();
    assert_eq!(
        commit.changed,
        [
            "name",
            "picture",
            "email",
            "identity.email",
            "identity.groups"
        ]
    );
    let user = b.store.get_user(&user_id).await.unwrap().unwrap();
    assert_eq!(user.email.as_deref(), Some("Ret@New.test"));
    assert_eq!(user.name.as_deref(), Some("Ret Urner"));
    // The claim moved: the new address is this user's, the old one free for anyone.
    let taken = b
        .store
        .commit_login(&LoginWrite {
            provider: "other".into(),
            ..login("someone", "ret@new.test")
        })
        .await;
    assert!(matches!(taken, Err(StoreError::AccountExists)), "{taken:?}");
    let freed = b
        .store
        .commit_login(&LoginWrite {
            provider: "other".into(),
            ..login("newcomer", "ret@old.test")
        })
        .await
        .unwrap();
    assert!(freed.new_user);

    // An unverified address never becomes the primary email.
    let commit = b
        .store
        .commit_login(&again("ret@unverified.test", false, "4"))
        .await
        .unwrap();
    assert_eq!(
        commit.changed,
        [
            "identity.email",
            "identity.email_verified",
            "identity.groups"
        ]
    );
    let user = b.store.get_user(&user_id).await.unwrap().unwrap();
    assert_eq!(user.email.as_deref(), Some("Ret@New.test"));

    // A verified address another user holds: the identity follows, the user keeps its own.
    let commit = b
        .store
        .commit_login(&again("ret@old.test", true, "5"))
        .await
        .unwrap();
    assert!(
        !commit.changed.contains(&"email".to_owned()),
        "{:?}",
        commit.changed
    );
    let user = b.store.get_user(&user_id).await.unwrap().unwrap();
    assert_eq!(user.email.as_deref(), Some("Ret@New.test"));
}

/// The auth callout's notes of the connections a session was admitted with: listed per
/// family until they expire, taken back one at a time, swept (sled) or forgotten by age
/// (JetStream) after.
pub(super) async fn a_sessions_nats_connections_are_noted_until_they_expire(b: Backend) {
    use lanyard::store::NatsConnection;
    let note = |server: &str, cid: u64, expires_at: i64| NatsConnection {
        server_id: server.into(),
        cid,
        expires_at,
    };
    let (a, b2, old) = (
        note("NSERVERA", 1, 100),
        note("NSERVERB", 1, 100),
        note("NSERVERA", 2, 10),
    );
    for n in [&a, &b2, &old] {
        b.store.put_nats_connection("ses_noted", n).await.unwrap();
    }
    b.store
        .put_nats_connection("ses_other", &note("NSERVERA", 3, 100))
        .await
        .unwrap();
    let mut found = b.store.nats_connections("ses_noted", 50).await.unwrap();
    found.sort_by(|x, y| x.server_id.cmp(&y.server_id));
    assert_eq!(
        found,
        [a.clone(), b2.clone()],
        "the unexpired notes of that family"
    );
    b.store
        .delete_nats_connection("ses_noted", &a)
        .await
        .unwrap();
    assert_eq!(
        b.store.nats_connections("ses_noted", 50).await.unwrap(),
        [b2]
    );
    assert!(b
        .store
        .nats_connections("ses_none", 50)
        .await
        .unwrap()
        .is_empty());
    // A sweep after they expired: sled deletes them; JetStream's bucket forgets them by age
    // (a day), so there they stay for now.
    let swept = b.store.sweep_logins(200).await.unwrap();
    let left = b.store.nats_connections("ses_noted", 0).await.unwrap();
    match b._nats {
        None => assert!(
            swept >= 3 && left.is_empty(),
            "{swept} swept, {left:?} left"
        ),
        Some(_) => assert_eq!(left.len(), 2, "{left:?}: the one deleted is gone"),
    }
}
