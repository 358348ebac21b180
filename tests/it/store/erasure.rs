//! Erasure: after `erase_user`, nothing of the user is left in the store. Checked by
//! reading every record beneath the store (each sled tree's keys and values; each bucket
//! stream's messages, delete markers and subjects included), not through its API.

use lanyard::store::{Rotation, StoreError, TokenRecord};

use super::{login, strict, Backend};

/// Long because the user must first have everything an erasure removes (two identities,
/// tokens, a chain of refreshes, a revoked family) and someone else who stays.
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
    // A NATS connection the live session was admitted with.
    let connection = lanyard::store::NatsConnection {
        server_id: "NERASEDSERVER".into(),
        cid: 41,
        expires_at: 100,
    };
    b.store
        .put_nats_connection("ses_erased-subject", &connection)
        .await
        .unwrap();
    // One whose token expired: not returned, but gone all the same.
    let expired = lanyard::store::NatsConnection {
        server_id: "NEXPIREDSERVER".into(),
        cid: 42,
        expires_at: 3,
    };
    b.store
        .put_nats_connection("ses_erased-subject", &expired)
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
    assert_eq!(erased.nats_connections, [connection]);
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
    assert_none_held(
        &held,
        &[
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
            "NERASEDSERVER",
            "NEXPIREDSERVER",
        ],
    );
    // The scan sees what stays: the other user, by their id as it is stored.
    assert!(held.iter().any(|r| contains(r, other.user.id.as_bytes())));
    assert!(held.iter().any(|r| contains(r, b"kept@example.test")));
}

/// Fails naming the first of `needles` some record holds.
fn assert_none_held(held: &[RawRecord], needles: &[&str]) {
    for needle in needles {
        let found = held
            .iter()
            .find(|record| contains(record, needle.as_bytes()));
        assert!(
            found.is_none(),
            "the store still holds {needle:?}: {found:?}"
        );
    }
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

/// Long because it builds, record by record, what the previous version left in a store.
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
    assert_none_held(
        &held,
        &[
            "usr_legacy",
            "legacy@example.test",
            "legacy-subject",
            "ses_legacy",
            "legacy-a",
            "legacy-b",
            "chain-1",
            "chain-2",
            "nobody-subject",
        ],
    );
}
