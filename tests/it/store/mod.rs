//! The store conformance suite: every case runs against both backends, a real sled directory
//! and a real JetStream server, and must come out the same. The rules themselves are written
//! once (`daemon/src/store/policy/`); these cases prove that each backend applies them,
//! atomically, under the concurrency each one allows.
//!
//! Each case is an `async fn(Backend)`; `conformance!` makes a `sled` and a `jetstream` test of
//! it. The JetStream pass of `make test` skips the suite: the first pass already ran both.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lanyard::store::{
    FeedEvent, IdentityRecord, JetStreamOptions, JetStreamStore, LoginWrite, ProviderRecord,
    RefreshTerms, Rotation, SessionRecord, SigningKeyRecord, SledStore, Snapshot, Store,
    StoreError, UserRecord,
};
use lanyard_provider_sdk::Profile;
use lanyard_tests::NatsServer;

mod erasure;
mod lives;
mod logins;
use erasure::*;
use lives::*;
use logins::*;

/// A store under test and what keeps it alive.
struct Backend {
    store: Arc<dyn Store>,
    /// Where the backend keeps its files (scanned for secrets).
    dirs: Vec<PathBuf>,
    _dir: tempfile::TempDir,
    _nats: Option<NatsServer>,
}

impl Backend {
    async fn sled() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        Self {
            store: Arc::new(store),
            dirs: vec![dir.path().to_owned()],
            _dir: dir,
            _nats: None,
        }
    }

    async fn jetstream() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().to_str().unwrap();
        let nats = NatsServer::start_jetstream(&["--jetstream", "--store_dir", store_dir]).unwrap();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let options = JetStreamOptions {
            bucket_prefix: "conformance".into(),
            replicas: 1,
            pending_ttl: Duration::from_secs(600),
        };
        let store = JetStreamStore::open(client, &options).await.unwrap();
        Self {
            store: Arc::new(store),
            dirs: vec![dir.path().to_owned()],
            _dir: dir,
            _nats: Some(nats),
        }
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn sled() {
                    super::$case(super::Backend::sled().await).await;
                }

                #[tokio::test]
                async fn jetstream() {
                    if lanyard_tests::nats::jetstream_under_test() {
                        return; // The first pass ran it on both backends.
                    }
                    super::$case(super::Backend::jetstream().await).await;
                }
            }
        )*
    };
}

conformance!(
    a_login_state_is_spent_once,
    a_previous_versions_pending_login_is_taken_once_and_stored_hashed,
    a_refused_login_writes_nothing,
    an_email_joins_its_owner_only_when_verified_and_trusted,
    a_link_session_login_links_to_the_signed_in_user_only,
    usernames_are_unique,
    a_reused_refresh_token_revokes_its_family,
    a_family_is_revoked_once,
    the_last_identity_cannot_be_unlinked,
    provider_writes_name_the_version_they_replace,
    the_first_signing_key_wins_and_rotation_retires_it,
    the_feed_reports_a_snapshot_then_every_shared_change,
    a_copy_goes_into_an_empty_store_only,
    a_reuse_within_the_grace_answers_the_same_successor,
    a_users_sessions_are_listed_and_revoked_one_by_one,
    a_disabled_user_neither_logs_in_nor_refreshes_until_enabled,
    an_erased_user_leaves_nothing_in_the_store,
    users_are_listed_in_pages_and_found_by_email_username_or_provider,
    a_returning_login_refreshes_the_profile_and_moves_a_verified_email,
    an_erasure_finds_sessions_the_previous_version_rotated,
    a_sessions_nats_connections_are_noted_until_they_expire,
    a_waited_login_ends_once_and_wakes_its_watchers,
);

/// The session stored under `key` (the daemon never reads one by key: it rotates or revokes).
async fn session(b: &Backend, key: &str) -> Result<Option<SessionRecord>, StoreError> {
    let sessions = b.store.export().await?.sessions;
    Ok(sessions.into_iter().find(|(k, _)| k == key).map(|(_, s)| s))
}

/// A login of identity `oidc`/`subject` with `email` (verified, untrusted), whose session is
/// stored under `session-{subject}` in family `ses_{subject}`.
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
            successor: None,
        },
        client: None,
        now: 1,
    }
}

/// Terms of a refresh to `successor` at `now`, expiring at `expires_at`, with no reuse grace.
fn strict(successor: &str, now: i64, expires_at: i64) -> RefreshTerms {
    RefreshTerms {
        candidates: vec![successor.to_owned()],
        now,
        expires_at,
        grace_secs: 0,
    }
}

async fn a_refused_login_writes_nothing(b: Backend) {
    let first = b
        .store
        .commit_login(&login("a", "x@example.test"))
        .await
        .unwrap();
    assert!(first.new_user && first.new_identity);
    let refused = b.store.commit_login(&login("b", "X@example.test")).await;
    assert!(
        matches!(refused, Err(StoreError::AccountExists)),
        "{refused:?}"
    );
    assert!(session(&b, "session-b").await.unwrap().is_none());
    let snapshot = b.store.export().await.unwrap();
    assert_eq!(snapshot.users.len(), 1);
    assert_eq!(
        snapshot.users[0].1.len(),
        1,
        "no identity for a refused login"
    );
    let session = session(&b, "session-a").await.unwrap().unwrap();
    assert_eq!(session.user_id, first.user.id);
    let family = b.store.get_family("ses_a").await.unwrap().unwrap();
    assert_eq!((family.user_id, family.revoked_at), (first.user.id, None));
}

async fn an_email_joins_its_owner_only_when_verified_and_trusted(b: Backend) {
    let owner = b
        .store
        .commit_login(&login("a", "ada@example.test"))
        .await
        .unwrap();
    let unverified = LoginWrite {
        trust_email_verified: true,
        profile: Profile {
            email_verified: false,
            ..login("b", "Ada@Example.test").profile
        },
        ..login("b", "Ada@Example.test")
    };
    assert!(matches!(
        b.store.commit_login(&unverified).await,
        Err(StoreError::AccountExists)
    ));
    let trusted = LoginWrite {
        trust_email_verified: true,
        ..login("b", "Ada@Example.test")
    };
    let joined = b.store.commit_login(&trusted).await.unwrap();
    assert_eq!(joined.user.id, owner.user.id);
    assert!(!joined.new_user && joined.new_identity);
    assert_eq!(
        b.store.user_identities(&owner.user.id).await.unwrap().len(),
        2
    );
    // Returning, either identity is the same user, and a new session each time.
    let again = b.store.commit_login(&login("b", "ada@example.test")).await;
    let again = again.unwrap();
    assert_eq!(again.user.id, owner.user.id);
    assert!(!again.new_user && !again.new_identity);
}

async fn a_link_session_login_links_to_the_signed_in_user_only(b: Backend) {
    let me = b
        .store
        .commit_login(&login("me", "me@example.test"))
        .await
        .unwrap();
    let other = b
        .store
        .commit_login(&login("other", "other@example.test"))
        .await
        .unwrap();
    let link = |subject: &str, user: &str| LoginWrite {
        link_user: Some(user.to_owned()),
        ..login(subject, "shared@example.test")
    };
    let linked = b
        .store
        .commit_login(&link("gh", &me.user.id))
        .await
        .unwrap();
    assert_eq!(linked.user.id, me.user.id);
    assert!(!linked.new_user && linked.new_identity);
    // The same identity cannot then be linked to another user.
    let stolen = b.store.commit_login(&link("gh", &other.user.id)).await;
    assert!(matches!(stolen, Err(StoreError::Conflict(_))), "{stolen:?}");
    let unknown = b.store.commit_login(&link("gl", "usr_nobody")).await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "{unknown:?}"
    );
    assert_eq!(b.store.user_identities(&me.user.id).await.unwrap().len(), 2);
    assert_eq!(
        b.store.user_identities(&other.user.id).await.unwrap().len(),
        1
    );
}

async fn usernames_are_unique(b: Backend) {
    let mut names = Vec::new();
    for (subject, email) in [
        ("1", "ada@a.test"),
        ("2", "ada@b.test"),
        ("3", "Ada@c.test"),
    ] {
        let commit = b.store.commit_login(&login(subject, email)).await.unwrap();
        names.push(commit.user.username);
    }
    assert_eq!(names, ["ada", "ada-2", "ada-3"]);
}

async fn a_reused_refresh_token_revokes_its_family(b: Backend) {
    let commit = b
        .store
        .commit_login(&login("a", "a@example.test"))
        .await
        .unwrap();
    let rotated = b
        .store
        .rotate_session("session-a", &strict("second", 2, 100))
        .await
        .unwrap();
    assert_eq!(
        rotated,
        Rotation::Rotated {
            user_id: commit.user.id.clone(),
            family_id: "ses_a".into()
        }
    );
    let successor = session(&b, "second").await.unwrap().unwrap();
    assert_eq!((successor.created_at, successor.expires_at), (2, 100));
    let replay = b
        .store
        .rotate_session("session-a", &strict("third", 3, 100))
        .await
        .unwrap();
    assert!(matches!(replay, Rotation::Reused { .. }), "{replay:?}");
    // The family is gone for the honest holder too.
    let honest = b
        .store
        .rotate_session("second", &strict("fourth", 4, 100))
        .await
        .unwrap();
    assert_eq!(honest, Rotation::Refused);
    let family = b.store.get_family("ses_a").await.unwrap().unwrap();
    assert_eq!(family.revoked_at, Some(3));
    // Expired and unknown tokens are refused.
    b.store
        .commit_login(&login("b", "b@example.test"))
        .await
        .unwrap();
    let expired = b
        .store
        .rotate_session("session-b", &strict("x", 11, 100))
        .await;
    assert_eq!(expired.unwrap(), Rotation::Refused);
    let unknown = b
        .store
        .rotate_session("nothing", &strict("y", 2, 100))
        .await;
    assert_eq!(unknown.unwrap(), Rotation::Refused);
}

async fn a_family_is_revoked_once(b: Backend) {
    let commit = b
        .store
        .commit_login(&login("a", "a@example.test"))
        .await
        .unwrap();
    let revoked = b.store.revoke_session("session-a", 5).await.unwrap();
    assert_eq!(revoked, Some((commit.user.id, "ses_a".to_owned())));
    assert_eq!(b.store.revoke_session("session-a", 6).await.unwrap(), None);
    assert_eq!(b.store.revoke_session("unknown", 6).await.unwrap(), None);
    let family = b.store.get_family("ses_a").await.unwrap().unwrap();
    assert_eq!(family.revoked_at, Some(5));
    let refresh = b
        .store
        .rotate_session("session-a", &strict("next", 6, 100))
        .await;
    assert_eq!(refresh.unwrap(), Rotation::Refused);
}

async fn the_last_identity_cannot_be_unlinked(b: Backend) {
    let me = b
        .store
        .commit_login(&login("a", "a@example.test"))
        .await
        .unwrap();
    let github = LoginWrite {
        provider: "github".into(),
        link_user: Some(me.user.id.clone()),
        ..login("gh", "a@example.test")
    };
    b.store.commit_login(&github).await.unwrap();
    let (identity, _) = b
        .store
        .get_tokens(&me.user.id, "github")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(identity.subject, "gh");
    let (removed, _) = b
        .store
        .unlink_identity(&me.user.id, "github")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (removed.provider.as_str(), removed.subject.as_str()),
        ("github", "gh")
    );
    assert!(b
        .store
        .get_tokens(&me.user.id, "github")
        .await
        .unwrap()
        .is_none());
    let last = b.store.unlink_identity(&me.user.id, "oidc").await;
    assert!(matches!(last, Err(StoreError::Conflict(_))), "{last:?}");
    assert_eq!(b.store.user_identities(&me.user.id).await.unwrap().len(), 1);
    assert!(b
        .store
        .unlink_identity(&me.user.id, "gitlab")
        .await
        .unwrap()
        .is_none());
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

async fn provider_writes_name_the_version_they_replace(b: Backend) {
    b.store.put_provider(&provider("a", 1), None).await.unwrap();
    let again = b.store.put_provider(&provider("a", 1), None).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let stale = b.store.put_provider(&provider("a", 5), Some(3)).await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    b.store
        .put_provider(&provider("a", 2), Some(1))
        .await
        .unwrap();
    assert_eq!(b.store.get_provider("a").await.unwrap().unwrap().version, 2);
    let wrong = b.store.delete_provider("a", 1).await;
    assert!(matches!(wrong, Err(StoreError::Conflict(_))), "{wrong:?}");
    let missing = b.store.delete_provider("b", 1).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
    b.store.delete_provider("a", 2).await.unwrap();
    assert!(b.store.list_providers().await.unwrap().is_empty());
}

fn key(kid: &str) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.into(),
        private: lanyard::crypto::Vault::from_key_bytes(&[1; 32])
            .seal(b"k", "test")
            .unwrap(),
        public_key: String::new(),
        created_at: 0,
        retired_at: None,
    }
}

async fn the_first_signing_key_wins_and_rotation_retires_it(b: Backend) {
    let firsts = ["one", "two", "three"].map(|kid| {
        let store = b.store.clone();
        tokio::spawn(async move { store.signing_keys(key(kid)).await.unwrap() })
    });
    let firsts: Vec<Vec<SigningKeyRecord>> = futures::future::join_all(firsts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(
        firsts
            .iter()
            .all(|keys| keys.len() == 1 && keys == &firsts[0]),
        "concurrent first starts agree on one key: {firsts:?}"
    );
    let (revision, keys) = b.store.rotate_signing_key(key("four"), 42).await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].retired_at, Some(42));
    assert_eq!((keys[1].kid.as_str(), keys[1].retired_at), ("four", None));
    assert_eq!(
        b.store.current_signing_keys().await.unwrap(),
        (revision, keys)
    );
}

/// The change feed starts with what is stored, then reports changes with a revision that
/// grows per record, also across a delete and a re-create, until the follower has each
/// record's newest state. (JetStream keeps only a key's newest change, so a change that a
/// newer one replaced before the feed read it may be skipped; sled reports every one.)
async fn the_feed_reports_a_snapshot_then_every_shared_change(b: Backend) {
    b.store.signing_keys(key("one")).await.unwrap();
    let first = b.store.put_provider(&provider("a", 1), None).await.unwrap();
    let mut feed = b.store.follow().await.unwrap();
    let Some(FeedEvent::Snapshot(snapshot)) = feed.recv().await else {
        panic!("a snapshot first");
    };
    assert_eq!(snapshot.providers.len(), 1);
    assert_eq!(snapshot.providers[0].0, first);
    assert_eq!(snapshot.signing_keys.as_ref().unwrap().1[0].kid, "one");

    let updated = b
        .store
        .put_provider(&provider("a", 2), Some(1))
        .await
        .unwrap();
    let deleted = b.store.delete_provider("a", 2).await.unwrap();
    let again = b.store.put_provider(&provider("a", 1), None).await.unwrap();
    let (rotated, _) = b.store.rotate_signing_key(key("two"), 7).await.unwrap();
    assert!(first < updated && updated < deleted && deleted < again);
    let (mut provider_at, mut keys_at) = (first, snapshot.signing_keys.unwrap().0);
    while provider_at != again || keys_at != rotated {
        let event = tokio::time::timeout(lanyard_tests::PATIENCE, feed.recv())
            .await
            .expect("the feed reports the newest state")
            .expect("the feed is open");
        match event {
            FeedEvent::Provider {
                id,
                revision,
                record,
            } => {
                assert_eq!(id, "a");
                assert!(revision > provider_at, "{revision:?} after {provider_at:?}");
                assert!([updated, deleted, again].contains(&revision));
                // A deletion reads as one; otherwise the record is there.
                assert_eq!(record.is_none(), revision == deleted);
                provider_at = revision;
            }
            FeedEvent::SigningKeys { revision, keys } => {
                assert_eq!(revision, rotated);
                assert_eq!(keys.len(), 2);
                keys_at = revision;
            }
            FeedEvent::Connected(_) => {}
            FeedEvent::Snapshot(_) => panic!("no resync: nothing was re-created"),
        }
    }
    feed.close().await;
}

async fn a_copy_goes_into_an_empty_store_only(b: Backend) {
    let user = UserRecord {
        id: "usr_imported".into(),
        username: "x".into(),
        email: Some("X@example.test".into()),
        email_verified: true,
        name: None,
        picture: None,
        created_at: 1,
        disabled_at: None,
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
    let snapshot = Snapshot {
        users: vec![(user.clone(), vec![identity.clone()])],
        signing_keys: vec![key("one")],
        ..Snapshot::default()
    };
    b.store.import(&snapshot).await.unwrap();
    assert_eq!(b.store.get_user("usr_imported").await.unwrap(), Some(user));
    assert_eq!(
        b.store.user_identities("usr_imported").await.unwrap(),
        vec![identity]
    );
    // Imported users log in as returning users, and the email index came along too.
    let commit = b
        .store
        .commit_login(&login("a", "x@example.test"))
        .await
        .unwrap();
    assert!(!commit.new_user && !commit.new_identity);
    assert_eq!(commit.user.id, "usr_imported");
    let other = b.store.commit_login(&login("b", "x@example.test")).await;
    assert!(matches!(other, Err(StoreError::AccountExists)), "{other:?}");
    // A store in use is never merged into.
    let again = b.store.import(&snapshot).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let exported = b.store.export().await.unwrap();
    assert_eq!(exported.users.len(), 1);
    assert_eq!(exported.sessions.len(), 1);
    assert_eq!(exported.signing_keys.len(), 1);
}
