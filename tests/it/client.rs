//! The Rust client (`clients/rust`, `lanyard-client`) against a real daemon: typed calls,
//! error codes as the enum, and local verification with its JWKS cache, which fetches again
//! for an unknown key and at a `keys.rotated` event.

use lanyard_client::{CallbackRequest, Client, ErrorCode, LoginRequest, WaitRequest};
use lanyard_tests::{FakeIdp, TestDaemon};

fn login_request(provider: &str) -> LoginRequest {
    LoginRequest {
        provider: provider.into(),
        redirect_uri: None,
        scopes: None,
        fetch_groups: false,
        return_to: None,
        login_hint: None,
        prompt: None,
        link_session: None,
        hosted: false,
    }
}

/// A whole login through the client: its session.
async fn log_in(client: &Client) -> lanyard_client::CallbackReply {
    let login = client.login(&login_request("oidc")).await.unwrap();
    let query = FakeIdp::browse(&login.authorization_url).await.unwrap();
    client
        .callback(&CallbackRequest {
            query: Some(query),
            binding: Some(login.binding),
            ..CallbackRequest::default()
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn typed_calls_and_error_codes() {
    let t = TestDaemon::start().await;
    let client = Client::new(t.client.clone());
    let done = log_in(&client).await;
    assert_eq!(done.user.email.as_deref(), Some("ada@example.test"));
    let claims = client.verify(&done.session.access_token).await.unwrap();
    assert_eq!(claims.sub, done.user.id);
    let user = client.user(&done.user.id).await.unwrap();
    assert_eq!(user.user.identities.len(), 1);
    let sessions = client.list_sessions(&done.user.id).await.unwrap();
    assert_eq!(sessions.sessions.len(), 1);
    // A refusal is the documented code, as the enum.
    let forged = client
        .callback(&CallbackRequest {
            state: Some("forged".into()),
            code: Some("x".into()),
            ..CallbackRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Some(ErrorCode::InvalidState));
    let unknown = client
        .device_wait(&WaitRequest {
            handle: "nope".into(),
            timeout_secs: Some(0),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Some(ErrorCode::NotFound));
    // Admin calls.
    let status = client.status().await.unwrap();
    assert!(status.providers.iter().any(|p| p.id == "oidc"));
    let providers = client.provider_list().await.unwrap();
    assert!(providers.providers.len() >= 3);
    // Revocation is the daemon's to see: after a logout the daemon refuses the token.
    client
        .revoke(&lanyard_client::RevokeRequest {
            refresh_token: Some(done.session.refresh_token.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let revoked = client.verify(&done.session.access_token).await.unwrap_err();
    assert_eq!(revoked.code(), Some(ErrorCode::Unauthorized));
}

#[tokio::test]
async fn local_verification_follows_key_rotations() {
    let t = TestDaemon::start().await;
    let client = Client::new(t.client.clone());
    let verifier = client.verifier("lanyard", "lanyard");
    verifier.follow_rotations().await.unwrap();
    let done = log_in(&client).await;
    let claims = verifier.verify(&done.session.access_token).await.unwrap();
    assert_eq!(claims.sub, done.user.id);
    assert_eq!(
        claims.sid,
        client.verify(&done.session.access_token).await.unwrap().sid
    );

    // A tampered token does not verify.
    let mut tampered = done.session.access_token.clone();
    tampered.pop();
    tampered.push(if done.session.access_token.ends_with('A') {
        'B'
    } else {
        'A'
    });
    let refused = verifier.verify(&tampered).await.unwrap_err();
    assert!(
        matches!(refused, lanyard_client::Error::InvalidToken(_)),
        "{refused}"
    );

    // A rotation: the `keys.rotated` event makes the verifier fetch the JWKS again, before
    // any token signed by the new key is seen (waited for, bounded: events are async).
    let rotated = client.rotate_keys().await.unwrap();
    let deadline = std::time::Instant::now() + lanyard_tests::PATIENCE;
    while !verifier.kids().contains(&rotated.kid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the rotation never reached the cache"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let refreshed = client.refresh(&done.session.refresh_token).await.unwrap();
    let token = refreshed.session.access_token;
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(rotated.kid.as_str()));
    assert_eq!(verifier.verify(&token).await.unwrap().sub, done.user.id);

    // A verifier that does not follow events fetches on the unknown kid itself.
    let lazy = client.verifier("lanyard", "lanyard");
    assert_eq!(lazy.verify(&token).await.unwrap().sub, done.user.id);
    // Another audience is refused.
    let other = client.verifier("lanyard", "someone-else");
    assert!(other.verify(&token).await.is_err());
}
