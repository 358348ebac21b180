//! Coherence: a change to shared state (an admin-created provider instance, the signing
//! keys) made through one daemon is served by every daemon: by the one that answered when it
//! answers, by the others as soon as the store's change feed brings it, by a daemon started
//! later, and by one that was cut off from NATS once it is back.

use std::future::Future;

use super::*;

/// How long a change may take to reach another daemon before a test gives up. It only
/// stops a test whose change never arrives; `make bench` measures how long it takes.
const REACH: Duration = lanyard_tests::PATIENCE;

/// The cluster, the provider and the shared master key; daemons join on any node.
struct Shared {
    cluster: NatsCluster,
    idp: FakeIdp,
    key: String,
    dir: tempfile::TempDir,
    client: async_nats::Client,
}

impl Shared {
    async fn start() -> Self {
        let cluster = NatsCluster::start(3).await.unwrap();
        let idp = FakeIdp::start(CLIENT_ID, CLIENT_SECRET).await.unwrap();
        // Writes wait out stream leaders' elections when a node goes: seconds, more on a
        // loaded machine. The limit only stops a hang.
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(2 * lanyard_tests::PATIENCE))
            .connect(cluster.urls())
            .await
            .unwrap();
        Self {
            cluster,
            idp,
            key: master_key(),
            dir: tempfile::tempdir().unwrap(),
            client,
        }
    }

    /// An in-process daemon on node `node` only, serving `{prefix}.v1.*`. Returns once the
    /// test's client reaches it: the client may sit on another node, which learns of the
    /// daemon's subscriptions over the routes a moment later.
    async fn daemon(&self, prefix: &str, node: usize) -> Daemon {
        let daemon = in_process(&config(
            &self.cluster.node_url(node),
            &self.idp.issuer(),
            &self.dir.path().join(prefix),
            prefix,
            &self.key,
        ))
        .await;
        eventually(&format!("{prefix} answers"), || {
            self.try_request(format!("{prefix}.v1.jwks"), json!({}))
        })
        .await;
        daemon
    }

    async fn admin(&self, prefix: &str, command: &str, body: Value) -> Value {
        let reply = request(&self.client, format!("{prefix}.v1.admin.{command}"), body).await;
        assert!(reply.get("error").is_none(), "{prefix} {command}: {reply}");
        reply
    }

    /// A request that may find nobody answering (a daemon still reconnecting).
    async fn try_request(&self, subject: String, body: Value) -> Result<Value, String> {
        let reply = self
            .client
            .request(subject.clone(), body.to_string().into())
            .await
            .map_err(|e| format!("{subject}: {e}"))?;
        serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())
    }

    /// The authorization URL daemon `prefix` hands out for a login at `provider`, or the
    /// error code it answers.
    async fn login_url(&self, prefix: &str, provider: &str) -> Result<String, String> {
        self.start_login(prefix, provider).await.map(|(url, _)| url)
    }

    /// The authorization URL and the binding of a login at `provider` started on daemon
    /// `prefix`, or the error code it answers.
    async fn start_login(&self, prefix: &str, provider: &str) -> Result<(String, Value), String> {
        let reply = self
            .try_request(
                format!("{prefix}.v1.login"),
                json!({ "provider": provider }),
            )
            .await?;
        match reply["authorization_url"].as_str() {
            Some(url) => Ok((url.to_owned(), reply["binding"].clone())),
            None => Err(reply["error"]["code"].as_str().unwrap_or("?").to_owned()),
        }
    }

    /// A login at `provider` started on `start`, approved, and called back on `callback`.
    async fn login(&self, provider: &str, start: &str, callback: &str) -> Value {
        let (url, binding) = self.start_login(start, provider).await.unwrap();
        let query = self.idp.approve(&url).await.unwrap();
        request(
            &self.client,
            format!("{callback}.v1.callback"),
            json!({ "query": query, "binding": binding }),
        )
        .await
    }

    async fn jwks(&self, prefix: &str) -> Value {
        self.try_request(format!("{prefix}.v1.jwks"), json!({}))
            .await
            .unwrap_or_else(|e| json!({ "unanswered": e }))
    }
}

/// An instance of the fake provider as an admin creates it.
fn instance(idp: &FakeIdp, id: &str, scopes: &[&str]) -> Value {
    json!({
        "id": id,
        "kind": "oidc",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": ["http://app.test/callback"],
        "issuer": idp.issuer(),
        "allowed_algs": ["RS256", "ES256"],
        "scopes": scopes,
    })
}

/// Polls `check` until it succeeds; fails the test with the last answer after [`REACH`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + REACH;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => {
                assert!(Instant::now() < deadline, "{what}: still {last}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Whether a login URL asks for `scope`.
fn asks_for(url: &str, scope: &str) -> Result<(), String> {
    let scopes = url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if scopes.split(' ').any(|s| s == scope) {
        Ok(())
    } else {
        Err(format!("scopes {scopes:?}"))
    }
}

/// Verifies a session token locally, as a service would, with a JWKS a daemon served.
fn verify_with(jwks: &Value, token: &str) -> Result<(), String> {
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_value(jwks.clone()).map_err(|e| e.to_string())?;
    let kid = jsonwebtoken::decode_header(token)
        .map_err(|e| e.to_string())?
        .kid
        .unwrap_or_default();
    let jwk = set.find(&kid).ok_or_else(|| format!("no key {kid}"))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Admin create, update, patch and delete, and a key rotation, all through `a`: `a` serves
/// each change when it answers, and `b` soon after. A login started on one daemon for a new
/// instance completes on the other; a login pending on `b` when `a` deletes its instance ends
/// in `invalid_state`; a token signed with the new key verifies on `b` at once, and with the
/// JWKS either daemon serves.
///
/// Long because it walks one cluster through every kind of change (create, update, patch, delete,
/// key rotation) in order; each step relies on the one before.
#[tokio::test]
async fn admin_changes_through_one_daemon_are_served_by_every_daemon() {
    let Some(_turn) = once_only().await else {
        return;
    };
    let s = Shared::start().await;
    let a = s.daemon("a", 0).await;
    let b = s.daemon("b", 1).await;

    s.admin(
        "a",
        "provider.create",
        instance(&s.idp, "dyn", &["openid", "email"]),
    )
    .await;
    s.login_url("a", "dyn").await.expect("a serves it at once");
    eventually("b serves the created instance", || s.login_url("b", "dyn")).await;
    let across = s.login("dyn", "a", "b").await;
    assert!(across.get("error").is_none(), "{across}");
    let across = s.login("dyn", "b", "a").await;
    assert!(across.get("error").is_none(), "{across}");

    s.admin(
        "a",
        "provider.update",
        instance(&s.idp, "dyn", &["openid", "updated"]),
    )
    .await;
    asks_for(&s.login_url("a", "dyn").await.unwrap(), "updated").unwrap();
    eventually("b serves the update", || async {
        asks_for(&s.login_url("b", "dyn").await?, "updated")
    })
    .await;

    s.admin(
        "a",
        "provider.patch",
        json!({ "id": "dyn", "scopes": ["openid", "patched"] }),
    )
    .await;
    eventually("b serves the patch", || async {
        asks_for(&s.login_url("b", "dyn").await?, "patched")
    })
    .await;

    // A login pending on b when a deletes the instance never completes, on any daemon.
    let (pending, binding) = s.start_login("b", "dyn").await.unwrap();
    let query = s.idp.approve(&pending).await.unwrap();
    s.admin("a", "provider.delete", json!({ "id": "dyn" }))
        .await;
    assert_eq!(
        s.login_url("a", "dyn").await,
        Err("unknown_provider".into())
    );
    let late = json!({ "query": query, "binding": binding });
    let late = request(&s.client, "b.v1.callback".into(), late).await;
    assert_eq!(late["error"]["code"], "invalid_state", "{late}");
    eventually("b stops serving the deleted instance", || async {
        match s.login_url("b", "dyn").await {
            Err(code) if code == "unknown_provider" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Keys: a session refreshed on a after a rotation there is signed by the new key.
    s.idp
        .set_user(lanyard_tests::TestUser::from_email("keys@example.com"));
    let login = s.login("oidc", "a", "a").await;
    let session = login["session"].clone();
    assert!(session.is_object(), "{login}");
    let rotated = s.admin("a", "keys.rotate", json!({})).await;
    let refreshed = request(
        &s.client,
        "a.v1.session.refresh".into(),
        json!({ "refresh_token": session["refresh_token"] }),
    )
    .await;
    let token = refreshed["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{refreshed}"))
        .to_owned();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(
        header.kid.as_ref(),
        rotated["kid"].as_str().map(str::to_owned).as_ref()
    );
    // b verifies it at once: an unknown key id makes it look in the store.
    let claims = request(
        &s.client,
        "b.v1.session.verify".into(),
        json!({ "token": token }),
    )
    .await;
    assert!(claims["sub"].is_string(), "{claims}");
    let jwks_a = s.jwks("a").await;
    eventually("b serves the same JWKS", || async {
        let jwks_b = s.jwks("b").await;
        if jwks_b == jwks_a {
            Ok(())
        } else {
            Err(format!("{jwks_b} vs {jwks_a}"))
        }
    })
    .await;
    for prefix in ["a", "b"] {
        verify_with(&s.jwks(prefix).await, &token).unwrap();
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// A daemon that starts after the changes serves what the store holds before it answers
/// anything: no instance it missed, no deleted one, the current keys.
#[tokio::test]
async fn a_daemon_started_later_serves_every_earlier_change() {
    let Some(_turn) = once_only().await else {
        return;
    };
    let s = Shared::start().await;
    let a = s.daemon("a", 0).await;
    for id in ["gone", "kept"] {
        s.admin("a", "provider.create", instance(&s.idp, id, &["openid"]))
            .await;
    }
    s.admin(
        "a",
        "provider.patch",
        json!({ "id": "kept", "scopes": ["openid", "patched"] }),
    )
    .await;
    s.admin("a", "provider.delete", json!({ "id": "gone" }))
        .await;
    s.admin("a", "keys.rotate", json!({})).await;

    let c = s.daemon("c", 2).await;
    asks_for(&s.login_url("c", "kept").await.unwrap(), "patched").unwrap();
    assert_eq!(
        s.login_url("c", "gone").await,
        Err("unknown_provider".into())
    );
    assert_eq!(s.jwks("c").await, s.jwks("a").await);
    let login = s.login("kept", "c", "a").await;
    assert!(login.get("error").is_none(), "{login}");
    a.shutdown().await;
    c.shutdown().await;
}

/// A daemon cut off from NATS (its only node down) while another changes shared state
/// catches up once it is back: its change feed resumes where it stopped.
#[tokio::test]
async fn a_daemon_cut_off_from_nats_catches_up_when_back() {
    let Some(_turn) = once_only().await else {
        return;
    };
    let mut s = Shared::start().await;
    let a = s.daemon("a", 0).await;
    let b = s.daemon("b", 2).await;
    s.admin("a", "provider.create", instance(&s.idp, "p", &["openid"]))
        .await;
    eventually("b serves p", || s.login_url("b", "p")).await;
    let jwks_before = s.jwks("b").await;

    // b's node goes; the cluster carries on with the other two once the buckets it led have
    // new leaders (a's writes during that election are the node-kill test's subject).
    s.cluster.kill(2);
    s.cluster
        .wait_for_stream_leaders(&["KV_lanyard_providers", "KV_lanyard_meta"])
        .await
        .unwrap();
    s.admin(
        "a",
        "provider.update",
        instance(&s.idp, "p", &["openid", "while_away"]),
    )
    .await;
    s.admin("a", "provider.create", instance(&s.idp, "q", &["openid"]))
        .await;
    s.admin("a", "keys.rotate", json!({})).await;
    let jwks_a = s.jwks("a").await;
    assert_ne!(jwks_a, jwks_before);

    s.cluster.restart(2).await.unwrap();
    eventually("b serves the update made while it was away", || async {
        asks_for(&s.login_url("b", "p").await?, "while_away")
    })
    .await;
    eventually("b serves the instance created while it was away", || {
        s.login_url("b", "q")
    })
    .await;
    eventually("b serves the keys rotated while it was away", || async {
        let jwks_b = s.jwks("b").await;
        if jwks_b == jwks_a {
            Ok(())
        } else {
            Err(jwks_b.to_string())
        }
    })
    .await;
    let status = request(&s.client, "b.v1.admin.status".into(), json!({})).await;
    assert_eq!(status["shared_changes"], "following", "{status}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A bucket deleted and made again under running daemons (an operator restoring it from a
/// backup, say) starts its revisions over, so no watch can resume where it was: every daemon
/// notices, reads the bucket whole again, and serves what it holds now.
#[tokio::test]
async fn a_bucket_made_again_is_read_whole_again() {
    let Some(_turn) = once_only().await else {
        return;
    };
    let s = Shared::start().await;
    let a = s.daemon("a", 0).await;
    let b = s.daemon("b", 1).await;
    // A few changes, so the feeds are further on than the new bucket will be.
    s.admin("a", "provider.create", instance(&s.idp, "old", &["openid"]))
        .await;
    for scope in ["one", "two"] {
        s.admin(
            "a",
            "provider.update",
            instance(&s.idp, "old", &["openid", scope]),
        )
        .await;
    }
    eventually("b serves old", || s.login_url("b", "old")).await;

    let api = |verb: &str| format!("$JS.API.STREAM.{verb}.KV_lanyard_providers");
    let info = request(&s.client, api("INFO"), json!({})).await;
    let deleted = request(&s.client, api("DELETE"), json!({})).await;
    assert_eq!(deleted["success"], true, "{deleted}");
    let created = request(&s.client, api("CREATE"), info["config"].clone()).await;
    assert!(created.get("error").is_none(), "{created}");
    s.admin("a", "provider.create", instance(&s.idp, "new", &["openid"]))
        .await;

    for prefix in ["a", "b"] {
        eventually(
            &format!("{prefix} serves the bucket as it is now"),
            || async {
                let new = s.login_url(prefix, "new").await;
                let old = s.login_url(prefix, "old").await;
                match (&new, &old) {
                    (Ok(_), Err(code)) if code == "unknown_provider" => Ok(()),
                    _ => Err(format!("new: {new:?}, old: {old:?}")),
                }
            },
        )
        .await;
    }
    a.shutdown().await;
    b.shutdown().await;
}
