//! The store's users' lives: refresh within the reuse grace, a user's session families,
//! disabling, and erasure (nothing of the user left in the store, scanned record by record,
//! index and marker included).

use lanyard::store::{RefreshTerms, Rotation, StoreError, TokenRecord};

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

pub(super) async fn an_erased_user_leaves_nothing_in_the_store(b: Backend) {
    let sealed = |s: &str| lanyard::crypto::Vault::from_key_bytes(&[1; 32]).seal(s.as_bytes(), "t");
    let tokens = TokenRecord {
        access_token: sealed("access").unwrap(),
        refresh_token: None,
        expires_at: None,
        scopes: vec![],
        updated_at: 1,
        reauth_required: false,
    };
    let mut first = login("erased-subject", "erased@example.test");
    first.tokens = Some(tokens.clone());
    first.profile.name = Some("Erased Name".into());
    let commit = b.store.commit_login(&first).await.unwrap();
    let user_id = commit.user.id.clone();
    let username = commit.user.username.clone();
    let second = lanyard::store::LoginWrite {
        provider: "github".into(),
        link_user: Some(user_id.clone()),
        session_key: "session-gh".into(),
        ..login("erased-gh-subject", "erased@example.test")
    };
    let mut second = second;
    second.session.family_id = "ses_erased_gh".into();
    b.store.commit_login(&second).await.unwrap();
    // A chain of refreshes, and a revoked family.
    b.store
        .rotate_session("session-erased-subject", &strict("link-2", 2, 100))
        .await
        .unwrap();
    b.store
        .rotate_session("link-2", &strict("link-3", 3, 100))
        .await
        .unwrap();
    b.store
        .revoke_family(&user_id, "ses_erased_gh", 4)
        .await
        .unwrap();
    // Someone else, who must stay.
    let other = b
        .store
        .commit_login(&login("kept", "kept@example.test"))
        .await
        .unwrap();

    let erased = b.store.erase_user(&user_id, 5).await.unwrap().unwrap();
    assert_eq!(erased.user.id, user_id);
    assert_eq!(erased.identities.len(), 2);
    assert!(erased.identities.iter().any(|(_, t)| t.is_some()));
    assert_eq!(erased.live_families, ["ses_erased-subject"]);
    assert!(b.store.erase_user(&user_id, 6).await.unwrap().is_none());
    assert!(b.store.get_user(&user_id).await.unwrap().is_none());
    assert!(b.store.user_families(&user_id).await.unwrap().is_empty());
    let refresh = b
        .store
        .rotate_session("link-3", &strict("link-4", 6, 100))
        .await;
    assert_eq!(refresh.unwrap(), Rotation::Refused);
    assert!(b.store.get_user(&other.user.id).await.unwrap().is_some());

    // The same identity logs in again: a new user, who may take the email and username.
    let mut back = login("erased-subject", "erased@example.test");
    back.session_key = "session-back".into();
    back.session.family_id = "ses_back".into();
    let back = b.store.commit_login(&back).await.unwrap();
    assert!(back.new_user);
    assert_ne!(back.user.id, user_id);
    assert_eq!(back.user.username, username);
    b.store.erase_user(&back.user.id, 7).await.unwrap().unwrap();

    let held = b.raw_records().await;
    for needle in [
        user_id.as_str(),
        back.user.id.as_str(),
        "erased@example.test",
        "erased-subject",
        "erased-gh-subject",
        "Erased Name",
        "ses_erased",
        "session-erased",
        "session-gh",
        "link-2",
        "link-3",
    ] {
        let found = held
            .iter()
            .find(|record| contains(record, needle.as_bytes()));
        assert!(
            found.is_none(),
            "the store still holds {needle:?}: {found:?}"
        );
    }
    // The scan sees what stays: the other user, by their id as it is stored.
    assert!(held.iter().any(|r| contains(r, other.user.id.as_bytes())));
    assert!(held.iter().any(|r| contains(r, b"kept@example.test")));
}

fn contains(record: &RawRecord, needle: &[u8]) -> bool {
    [&record.key, &record.value]
        .iter()
        .any(|hay| hay.windows(needle.len()).any(|w| w == needle))
}

/// One record as the backend holds it: its place (tree and key, or stream subject) and
/// value (with headers, on JetStream).
pub(super) struct RawRecord {
    pub(super) key: Vec<u8>,
    pub(super) value: Vec<u8>,
}

impl std::fmt::Debug for RawRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} = {:?}",
            String::from_utf8_lossy(&self.key),
            String::from_utf8_lossy(&self.value)
        )
    }
}

impl Backend {
    /// Every record the backend holds, read record by record from beneath the store: each
    /// sled tree's keys and values; each bucket stream's messages, delete markers too.
    pub(super) async fn raw_records(self) -> Vec<RawRecord> {
        let Backend {
            store,
            dirs,
            _dir,
            _nats,
        } = self;
        drop(store);
        match _nats {
            None => sled_records(&dirs[0]),
            Some(nats) => jetstream_records(&nats).await,
        }
    }
}

fn sled_records(dir: &std::path::Path) -> Vec<RawRecord> {
    // The dropped store releases its lock when sled's background work ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match sled::open(dir) {
            Ok(db) => break db,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("cannot open the sled store: {e}"),
        }
    };
    let mut out = Vec::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name).unwrap();
        for entry in tree.iter() {
            let (key, value) = entry.unwrap();
            out.push(RawRecord {
                key: [&name[..], b"/", &key[..]].concat(),
                value: value.to_vec(),
            });
        }
    }
    out
}

async fn jetstream_records(nats: &lanyard_tests::NatsServer) -> Vec<RawRecord> {
    use futures::TryStreamExt;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    let mut out = Vec::new();
    for name in names {
        let mut stream = js.get_stream(&name).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue; // removed
            };
            let headers = format!("{:?}", message.headers);
            // Bucket keys are base64url: the subject's tokens decoded too.
            let mut key = format!("{name}/{}", message.subject).into_bytes();
            for token in message.subject.split('.') {
                use base64::Engine;
                if let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) {
                    key.extend_from_slice(b"/");
                    key.extend_from_slice(&raw);
                }
            }
            out.push(RawRecord {
                key,
                value: [message.payload.as_ref(), headers.as_bytes()].concat(),
            });
        }
    }
    assert!(!out.is_empty(), "the scan read nothing");
    out
}

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

pub(super) async fn an_erasure_finds_sessions_the_previous_version_rotated(b: Backend) {
    use lanyard::store::{FamilyRecord, IdentityRecord, SessionRecord, Snapshot, UserRecord};
    let user = UserRecord {
        id: "usr_legacy".into(),
        username: "legacy".into(),
        email: Some("legacy@example.test".into()),
        email_verified: true,
        name: None,
        picture: None,
        created_at: 0,
        disabled_at: None,
    };
    let identity = IdentityRecord {
        provider: "oidc".into(),
        subject: "legacy-subject".into(),
        user_id: user.id.clone(),
        email: user.email.clone(),
        email_verified: true,
        groups: vec![],
        created_at: 0,
        updated_at: 0,
    };
    let token = |used: Option<i64>, family: &str| SessionRecord {
        user_id: user.id.clone(),
        family_id: family.into(),
        created_at: 0,
        expires_at: 4_000_000_000,
        used_at: used,
        successor: None,
    };
    let family = |first: Option<&str>| FamilyRecord {
        user_id: user.id.clone(),
        created_at: 0,
        revoked_at: None,
        provider: None,
        subject: None,
        client: None,
        refreshed_at: None,
        expires_at: first.map(|_| 4_000_000_000),
        first: first.map(str::to_owned),
    };
    // One family of the previous version (no first token), one of this version whose chain
    // the previous version rotated (the used token names no successor).
    b.store
        .import(&Snapshot {
            users: vec![(user.clone(), vec![identity])],
            sessions: vec![
                ("legacy-a".into(), token(Some(1), "ses_legacy_a")),
                ("legacy-b".into(), token(None, "ses_legacy_a")),
                ("chain-1".into(), token(Some(1), "ses_legacy_c")),
                ("chain-2".into(), token(None, "ses_legacy_c")),
            ],
            families: vec![
                ("ses_legacy_a".into(), family(None)),
                ("ses_legacy_c".into(), family(Some("chain-1"))),
            ],
            ..Snapshot::default()
        })
        .await
        .unwrap();
    // A token refresh whose identity went meanwhile keeps nothing.
    let sealed = lanyard::crypto::Vault::from_key_bytes(&[1; 32])
        .seal(b"access", "t")
        .unwrap();
    let tokens = TokenRecord {
        access_token: sealed,
        refresh_token: None,
        expires_at: None,
        scopes: vec![],
        updated_at: 1,
        reauth_required: false,
    };
    let orphan = b.store.put_tokens("oidc", "nobody-subject", &tokens).await;
    assert!(matches!(orphan, Err(StoreError::NotFound(_))), "{orphan:?}");

    let erased = b.store.erase_user("usr_legacy", 5).await.unwrap().unwrap();
    assert_eq!(erased.live_families.len(), 2);
    let held = b.raw_records().await;
    for needle in [
        "usr_legacy",
        "legacy@example.test",
        "legacy-subject",
        "ses_legacy",
        "legacy-a",
        "legacy-b",
        "chain-1",
        "chain-2",
        "nobody-subject",
    ] {
        let found = held
            .iter()
            .find(|record| contains(record, needle.as_bytes()));
        assert!(
            found.is_none(),
            "the store still holds {needle:?}: {found:?}"
        );
    }
}
