//! The NATS JWTs of the auth callout: reading the server's authorization request, and
//! signing the authorization response with the user JWT inside it.
//!
//! The JWTs are written here with serde and `nkeys`: `nats-jwt` 0.3 covers user and account
//! claims but has no `aud` for users (config mode places a user in the account its `aud`
//! names) and no authorization request or response.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{NatsAuthConfig, NatsAuthMode, NatsPermissionTemplates};

/// The `aud` of every authorization request the server sends.
const REQUEST_AUDIENCE: &str = "nats-authorization-request";

/// The header of every NATS JWT.
const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// An authorization request, checked: the server signed it, for the callout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthRequest {
    /// The connecting client's nkey (the user JWT's `sub`).
    pub user_nkey: String,
    /// The server's id (the response's `aud`).
    pub server_id: String,
    /// The client's connection id on that server.
    pub cid: u64,
    /// The token the client connected with, if any.
    pub token: Option<String>,
}

/// Why a request is not one the callout answers with a decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadRequest {
    #[error("not a JWT")]
    Malformed,
    #[error("not signed by a server key")]
    Signature,
    #[error("not an authorization request")]
    NotAuthorization,
}

#[derive(Deserialize)]
struct RequestClaims {
    iss: String,
    aud: Option<String>,
    exp: Option<i64>,
    nats: RequestNats,
}

#[derive(Deserialize)]
struct RequestNats {
    #[serde(rename = "type")]
    kind: String,
    server_id: ServerId,
    user_nkey: String,
    #[serde(default)]
    client_info: ClientInfo,
    #[serde(default)]
    connect_opts: ConnectOpts,
}

#[derive(Default, Deserialize)]
struct ClientInfo {
    #[serde(default)]
    id: u64,
}

#[derive(Deserialize)]
struct ServerId {
    id: String,
}

#[derive(Default, Deserialize)]
struct ConnectOpts {
    #[serde(default)]
    auth_token: Option<String>,
}

/// Reads and checks an authorization request: a JWT whose signature is its issuer's (a
/// server nkey; `server_key` gives the key that verifies it), the server id it names, for the callout's audience, unexpired at
/// `now`, naming a user nkey.
pub(crate) fn read_request<K: std::ops::Deref<Target = nkeys::KeyPair>>(
    jwt: &[u8],
    now: i64,
    server_key: impl FnOnce(&str) -> Option<K>,
) -> Result<AuthRequest, BadRequest> {
    let jwt = std::str::from_utf8(jwt).map_err(|_| BadRequest::Malformed)?;
    let mut parts = jwt.trim().split('.');
    let (Some(header), Some(body), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| BadRequest::Malformed)
    };
    let header: Value =
        serde_json::from_slice(&decode(header)?).map_err(|_| BadRequest::Malformed)?;
    if !matches!(header["alg"].as_str(), Some("ed25519-nkey" | "ed25519")) {
        return Err(BadRequest::Signature);
    }
    let claims: RequestClaims =
        serde_json::from_slice(&decode(body)?).map_err(|_| BadRequest::NotAuthorization)?;
    let server = server_key(&claims.iss).ok_or(BadRequest::Signature)?;
    let signed = &jwt.trim()[..jwt.trim().len() - signature.len() - 1];
    server
        .verify(signed.as_bytes(), &decode(signature)?)
        .map_err(|_| BadRequest::Signature)?;
    let nats = claims.nats;
    if claims.aud.as_deref() != Some(REQUEST_AUDIENCE)
        || nats.kind != "authorization_request"
        || nats.server_id.id != claims.iss
        || claims.exp.is_some_and(|exp| exp < now)
        || !nats.user_nkey.starts_with('U')
        || nkeys::from_public_key(&nats.user_nkey).is_err()
    {
        return Err(BadRequest::NotAuthorization);
    }
    Ok(AuthRequest {
        user_nkey: nats.user_nkey,
        server_id: nats.server_id.id,
        cid: nats.client_info.id,
        token: nats.connect_opts.auth_token.filter(|t| !t.is_empty()),
    })
}

/// What a connection may do, its templates filled in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub deny_publish: Vec<String>,
    pub deny_subscribe: Vec<String>,
}

/// The templates with each placeholder of `fill` replaced by its value.
pub(crate) fn permissions(
    templates: &NatsPermissionTemplates,
    fill: &[(&str, &str)],
) -> Permissions {
    let fill = |list: &[String]| {
        list.iter()
            .map(|t| {
                fill.iter().fold(t.clone(), |t, (placeholder, value)| {
                    t.replace(placeholder, value)
                })
            })
            .collect()
    };
    Permissions {
        publish: fill(&templates.publish),
        subscribe: fill(&templates.subscribe),
        deny_publish: fill(&templates.deny_publish),
        deny_subscribe: fill(&templates.deny_subscribe),
    }
}

impl Permissions {
    /// Adds `more`'s allows and denies to these.
    pub(crate) fn extend(&mut self, more: Permissions) {
        self.publish.extend(more.publish);
        self.subscribe.extend(more.subscribe);
        self.deny_publish.extend(more.deny_publish);
        self.deny_subscribe.extend(more.deny_subscribe);
    }
}

/// Signs callout answers with the issuer account key.
pub(crate) struct Signer {
    /// Signs the answers: the callout account's key (or, in operator mode, a signing key of
    /// it, `issuer_account` naming the account).
    issuer: nkeys::KeyPair,
    issuer_account: Option<String>,
    /// Where users are placed: an account's name (config mode) or public key (operator).
    account: String,
    mode: NatsAuthMode,
    /// Operator mode: signs the user JWTs, when not `issuer`.
    user_signer: Option<nkeys::KeyPair>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("issuer", &self.issuer.public_key())
            .field("account", &self.account)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer `[nats_auth]` describes (validated: the seeds are account seeds).
    pub(crate) fn new(config: &NatsAuthConfig) -> Result<Self, crate::config::ConfigError> {
        let seed = config
            .resolve_seed()?
            .ok_or_else(|| crate::config::ConfigError::at("nats_auth.issuer_seed", "required"))?;
        let user_signer = match config.resolve_user_signing_seed()? {
            Some(seed) => Some(crate::config::account_seed(
                "nats_auth.user_signing_seed",
                &seed,
            )?),
            None => None,
        };
        Ok(Self {
            issuer: crate::config::account_seed("nats_auth.issuer_seed", &seed)?,
            issuer_account: config.issuer_account.clone(),
            account: config.account.clone(),
            mode: config.mode,
            user_signer,
        })
    }

    /// The response admitting `request`'s client as `name` with `permissions` until
    /// `expires_at` (the connection's end: the server closes it then), if any.
    pub(crate) fn admit(
        &self,
        request: &AuthRequest,
        name: &str,
        permissions: &Permissions,
        expires_at: Option<i64>,
        now: i64,
    ) -> String {
        let rules = |allow: &[String], deny: &[String]| {
            let mut rule = serde_json::Map::new();
            if !allow.is_empty() {
                rule.insert("allow".into(), json!(allow));
            }
            if !deny.is_empty() {
                rule.insert("deny".into(), json!(deny));
            }
            Value::Object(rule)
        };
        let signer = self.user_signer.as_ref().unwrap_or(&self.issuer);
        let mut user = json!({
            "jti": ulid::Ulid::new().to_string(),
            "iat": now,
            "iss": signer.public_key(),
            "name": name,
            "sub": request.user_nkey,
            "nats": {
                "pub": rules(&permissions.publish, &permissions.deny_publish),
                "sub": rules(&permissions.subscribe, &permissions.deny_subscribe),
                "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2,
            },
        });
        if let Some(at) = expires_at {
            user["exp"] = json!(at);
        }
        match self.mode {
            // Config mode places the user in the account its `aud` names.
            NatsAuthMode::Config => user["aud"] = json!(self.account),
            // Operator mode places it in its issuer's account: a signing key names it.
            NatsAuthMode::Operator if signer.public_key() != self.account => {
                user["nats"]["issuer_account"] = json!(self.account);
            }
            NatsAuthMode::Operator => {}
        }
        let user_jwt = sign(signer, &user);
        self.respond(request, json!({ "jwt": user_jwt }), now)
    }

    /// The response refusing `request`'s client, saying `why` (no secret in it: the server
    /// logs it).
    pub(crate) fn refuse(&self, request: &AuthRequest, why: &str, now: i64) -> String {
        self.respond(request, json!({ "error": why }), now)
    }

    fn respond(&self, request: &AuthRequest, mut nats: Value, now: i64) -> String {
        nats["type"] = json!("authorization_response");
        nats["version"] = json!(2);
        if let Some(account) = &self.issuer_account {
            nats["issuer_account"] = json!(account);
        }
        let claims = json!({
            "jti": ulid::Ulid::new().to_string(),
            "iat": now,
            "iss": self.issuer.public_key(),
            "sub": request.user_nkey,
            "aud": request.server_id,
            "nats": nats,
        });
        sign(&self.issuer, &claims)
    }
}

/// A NATS JWT of `claims`, signed by `key`.
fn sign(key: &nkeys::KeyPair, claims: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key
        .sign(signing_input.as_bytes())
        .expect("an account key pair with its seed signs");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(jwt: &[u8], now: i64) -> Result<AuthRequest, BadRequest> {
        let keys = crate::callout::keys::ServerKeys::new(None).unwrap();
        read_request(jwt, now, |id| keys.verifier(id))
    }

    fn request_jwt(server: &nkeys::KeyPair, claims: Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = server.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn claims(server: &nkeys::KeyPair, user: &str) -> Value {
        json!({
            "iss": server.public_key(), "aud": REQUEST_AUDIENCE, "sub": user,
            "nats": { "type": "authorization_request", "user_nkey": user,
                      "server_id": { "id": server.public_key(), "name": "n1" },
                      "client_info": { "id": 7, "host": "127.0.0.1" },
                      "connect_opts": { "auth_token": "tok", "protocol": 1 } },
        })
    }

    #[test]
    fn a_server_signed_request_is_read_and_anything_else_refused() {
        let server = nkeys::KeyPair::new_server();
        let user = nkeys::KeyPair::new_user().public_key();
        let good = request_jwt(&server, claims(&server, &user));
        let read = checked(good.as_bytes(), 0).unwrap();
        assert_eq!(read.user_nkey, user);
        assert_eq!(read.token.as_deref(), Some("tok"));
        assert_eq!(read.server_id, server.public_key());
        assert_eq!(read.cid, 7);

        // Signed by another key than its issuer's.
        let other = nkeys::KeyPair::new_server();
        let forged = request_jwt(&other, claims(&server, &user));
        assert_eq!(checked(forged.as_bytes(), 0), Err(BadRequest::Signature));
        // Signed by an account key: not a server.
        let account = nkeys::KeyPair::new_account();
        let by_account = request_jwt(&account, claims(&account, &user));
        assert_eq!(
            checked(by_account.as_bytes(), 0),
            Err(BadRequest::Signature)
        );
        // Signed by one server, naming another.
        let mut other_id = claims(&server, &user);
        other_id["nats"]["server_id"]["id"] = json!(other.public_key());
        let other_id = request_jwt(&server, other_id);
        assert_eq!(
            checked(other_id.as_bytes(), 0),
            Err(BadRequest::NotAuthorization)
        );
        // Another audience, an expired one, a non-user nkey.
        let mut wrong = claims(&server, &user);
        wrong["aud"] = json!("someone-else");
        let wrong = request_jwt(&server, wrong);
        assert_eq!(
            checked(wrong.as_bytes(), 0),
            Err(BadRequest::NotAuthorization)
        );
        let mut old = claims(&server, &user);
        old["exp"] = json!(10);
        let old = request_jwt(&server, old);
        assert_eq!(
            checked(old.as_bytes(), 11),
            Err(BadRequest::NotAuthorization)
        );
        assert_eq!(checked(b"garbage", 0), Err(BadRequest::Malformed));
    }

    #[test]
    fn templates_are_filled_and_the_answer_is_signed_by_the_issuer() {
        let templates = NatsPermissionTemplates {
            publish: vec!["app.{user_id}.>".into()],
            subscribe: vec!["app.{user_id}.>".into(), "_INBOX.>".into()],
            deny_publish: vec!["app.{user_id}.{session_id}.x".into()],
            deny_subscribe: vec![],
        };
        let p = permissions(
            &templates,
            &[("{user_id}", "usr_1"), ("{session_id}", "ses_1")],
        );
        assert_eq!(p.publish, ["app.usr_1.>"]);
        assert_eq!(p.deny_publish, ["app.usr_1.ses_1.x"]);
        let issuer = nkeys::KeyPair::new_account();
        let signer = Signer {
            issuer: nkeys::KeyPair::from_seed(&issuer.seed().unwrap()).unwrap(),
            issuer_account: None,
            account: "APP".into(),
            mode: NatsAuthMode::Config,
            user_signer: None,
        };
        let request = AuthRequest {
            user_nkey: nkeys::KeyPair::new_user().public_key(),
            server_id: "NSERVER".into(),
            cid: 1,
            token: None,
        };
        let response = signer.admit(&request, "usr_1", &p, Some(100), 50);
        let parts: Vec<&str> = response.split('.').collect();
        let body: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(body["aud"], "NSERVER");
        assert_eq!(body["nats"]["type"], "authorization_response");
        let input = format!("{}.{}", parts[0], parts[1]);
        issuer
            .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
            .unwrap();
        let user_jwt = body["nats"]["jwt"].as_str().unwrap();
        let user: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(user_jwt.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(user["aud"], "APP");
        assert_eq!(user["sub"], request.user_nkey.as_str());
        assert_eq!(user["exp"], 100);
        assert_eq!(user["nats"]["pub"]["allow"], json!(["app.usr_1.>"]));
        assert_eq!(user["nats"]["pub"]["deny"], json!(["app.usr_1.ses_1.x"]));
        assert!(user["nats"]["sub"].get("deny").is_none());
    }

    fn body(jwt: &str) -> Value {
        let part = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn operator_mode_signs_users_with_the_accounts_signing_key_and_names_the_account() {
        let (callout, app, app_signing) = (
            nkeys::KeyPair::new_account(),
            nkeys::KeyPair::new_account(),
            nkeys::KeyPair::new_account(),
        );
        let callout_account = nkeys::KeyPair::new_account().public_key();
        let signer = Signer {
            issuer: nkeys::KeyPair::from_seed(&callout.seed().unwrap()).unwrap(),
            issuer_account: Some(callout_account.clone()),
            account: app.public_key(),
            mode: NatsAuthMode::Operator,
            user_signer: Some(nkeys::KeyPair::from_seed(&app_signing.seed().unwrap()).unwrap()),
        };
        let request = AuthRequest {
            user_nkey: nkeys::KeyPair::new_user().public_key(),
            server_id: "NSERVER".into(),
            cid: 1,
            token: None,
        };
        let response = body(&signer.admit(&request, "usr_1", &Permissions::default(), None, 1));
        assert_eq!(response["iss"], callout.public_key().as_str());
        assert_eq!(response["nats"]["issuer_account"], callout_account.as_str());
        let user = body(response["nats"]["jwt"].as_str().unwrap());
        assert_eq!(user["iss"], app_signing.public_key().as_str());
        assert_eq!(user["nats"]["issuer_account"], app.public_key().as_str());
        assert!(
            user.get("aud").is_none(),
            "operator mode places by issuer, not aud"
        );
    }
}
