//! Logins through Lanyard's hosted pages, for apps that can open a browser but receive
//! nothing: `login` with `hosted`, the start page (the binding cookie, then the provider),
//! the provider back to Lanyard's `/callback`, and the app's `login.wait`. The browser is
//! played with plain HTTP here (each step's headers checked); `hosted_browser` runs the same
//! in headless Chromium.

use lanyard_tests::harness::{next_event, Reply};
use lanyard_tests::{FakeIdp, TestDaemon};
use serde_json::{json, Value};

/// A daemon with the hosted pages on a loopback port, whose `oidc` instance allows their
/// callback (and `https://app.test/` as a `return_to`).
pub(crate) async fn start_hosted(edit: impl FnOnce(&mut String)) -> (TestDaemon, String) {
    let port = lanyard_tests::nats::free_port().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let t = TestDaemon::start_with(|config| {
        *config = config.replace(
            "redirect_uris = [\"http://app.test/callback\", \"http://app.test/other\"]",
            &format!(
                "redirect_uris = [\"http://app.test/callback\", \"{base}/callback\"]\n\
                 allowed_return_to = [\"https://app.test/\"]\nhosted_logins = true"
            ),
        );
        config.push_str(&format!(
            "\n[hosted]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{base}\"\n"
        ));
        edit(config);
    })
    .await;
    (t, base)
}

/// An HTTP client that follows no redirect: each step is looked at.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Every hosted answer is never framed, cached or sent on as a referrer.
fn assert_guarded(response: &reqwest::Response) {
    let h = response.headers();
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
}

/// Opens the start page: the cookie it sets (`name=value`) and where it sends the browser.
async fn open_start(url: &str) -> (String, String) {
    // Shown: where the user is going, and "Continue"; showing it opens nothing.
    let page = browser().get(url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_guarded(&page);
    let html = page.text().await.unwrap();
    assert!(html.contains("Continue to oidc") && html.contains("<form method=\"post\">"));
    let response = continue_from(url, Some("same-origin")).await;
    assert_eq!(response.status(), 303, "{}", response.text().await.unwrap());
    assert_guarded(&response);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(
        cookie.contains("Path=/;") && cookie.starts_with("lanyard_"),
        "{cookie}"
    );
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    (cookie.split(';').next().unwrap().to_owned(), location)
}

/// "Continue" on the start page at `url`, as a browser posts it (`Sec-Fetch-Site`).
async fn continue_from(url: &str, site: Option<&str>) -> reqwest::Response {
    let mut request = browser().post(url);
    if let Some(site) = site {
        request = request.header("sec-fetch-site", site);
    }
    let response = request.send().await.unwrap();
    assert_guarded(&response);
    response
}

/// The browser back at Lanyard's callback with `cookie` (or none).
async fn back_at_callback(base: &str, query: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = browser().get(format!("{base}/callback?{query}"));
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("other=1; {cookie}"));
    }
    let response = request.send().await.unwrap();
    assert_guarded(&response);
    response
}

async fn wait(t: &TestDaemon, handle: &Value) -> Reply {
    t.wait_ended("login.wait", handle).await
}

#[tokio::test]
async fn a_hosted_login_ends_in_the_apps_wait() {
    let (t, base) = start_hosted(|_| {}).await;
    let mut events = t
        .client
        .subscribe("lanyard.events.user.logged_in")
        .await
        .unwrap();
    let login = t
        .request("login", json!({ "provider": "oidc", "hosted": true }))
        .await;
    let login = login.ok().clone();
    let start = login["authorization_url"].as_str().unwrap();
    assert!(start.starts_with(&format!("{base}/login/")), "{start}");
    let handle = &login["handle"];
    let pending = t
        .request("login.wait", json!({ "handle": handle, "timeout_secs": 0 }))
        .await;
    assert_eq!(pending.ok()["status"], "pending");

    let (cookie, provider_url) = open_start(start).await;
    assert!(provider_url.contains(&format!(
        "redirect_uri={}",
        url::form_urlencoded::byte_serialize(format!("{base}/callback").as_bytes())
            .collect::<String>()
    )));
    let query = FakeIdp::browse(&provider_url).await.unwrap();
    let page = back_at_callback(&base, &query, Some(&cookie)).await;
    assert_eq!(page.status(), 200);
    // The binding cookie is cleared.
    let cleared = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cleared.starts_with(&format!("{}=;", cookie.split('=').next().unwrap()))
            && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("You are signed in"), "{html}");

    let done = wait(&t, handle).await;
    let done = done.ok();
    assert_eq!(done["status"], "done");
    assert_eq!(done["user"]["email"], "ada@example.test");
    let token = done["session"]["access_token"].as_str().unwrap();
    t.request("session.verify", json!({ "token": token }))
        .await
        .ok();
    next_event(&mut events).await;
}

#[tokio::test]
async fn a_start_page_opens_once() {
    let (t, _) = start_hosted(|_| {}).await;
    let login = t
        .request("login", json!({ "provider": "oidc", "hosted": true }))
        .await;
    let start = login.ok()["authorization_url"].as_str().unwrap().to_owned();
    // A link scanner or a chat's preview fetches the page first: nothing is opened.
    for _ in 0..2 {
        assert_eq!(browser().get(&start).send().await.unwrap().status(), 200);
    }
    // A form another site posts (the user never saw the page), or a post that is not a
    // browser's on our page: refused, nothing opened.
    for site in [Some("cross-site"), Some("same-site"), None] {
        let refused = continue_from(&start, site).await;
        assert_eq!(refused.status(), 403, "{site:?}");
        assert!(refused
            .text()
            .await
            .unwrap()
            .contains("<code>forbidden</code>"));
    }
    let origin = start.split("/login/").next().unwrap().to_owned();
    let by_origin = browser()
        .post(&start)
        .header("origin", "http://evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(by_origin.status(), 403);
    open_start(&start).await;
    // Continued again (the link forwarded, or replayed): refused, whoever posts it, also
    // with the right Origin.
    let again = browser()
        .post(&start)
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    assert_guarded(&again);
    let html = again.text().await.unwrap();
    assert!(html.contains("<code>invalid_state</code>"), "{html}");
}

#[tokio::test]
async fn a_callback_without_the_start_pages_cookie_is_refused() {
    let (t, base) = start_hosted(|_| {}).await;
    let login = t
        .request("login", json!({ "provider": "oidc", "hosted": true }))
        .await;
    let login = login.ok().clone();
    let (cookie, provider_url) = open_start(login["authorization_url"].as_str().unwrap()).await;
    let query = FakeIdp::browse(&provider_url).await.unwrap();
    // Another browser without the cookie: refused, and nothing spent (the right browser
    // may still come back).
    let page = back_at_callback(&base, &query, None).await;
    assert_eq!(page.status(), 400);
    let pending = t
        .request(
            "login.wait",
            json!({ "handle": login["handle"], "timeout_secs": 0 }),
        )
        .await;
    assert_eq!(pending.ok()["status"], "pending");
    // One with a cookie of that name but another value: invalid_state, and the app hears it.
    let name = cookie.split('=').next().unwrap();
    let wrong = format!("{name}=not-the-binding");
    let page = back_at_callback(&base, &query, Some(&wrong)).await;
    assert_eq!(page.status(), 400);
    assert!(page.text().await.unwrap().contains("invalid_state"));
    assert_eq!(wait(&t, &login["handle"]).await.code(), "invalid_state");
    // The state is spent: the right browser coming back now is refused too.
    let late = back_at_callback(&base, &query, Some(&cookie)).await;
    assert_eq!(late.status(), 400);
}

#[tokio::test]
async fn the_binding_is_required_and_only_the_spending_callback_tells_the_app() {
    // Even on an instance that lets callbacks without a binding through (a migration
    // setting), a hosted login's callback needs the start page's cookie.
    let (t, base) = start_hosted(|config| {
        *config = config.replace(
            "hosted_logins = true",
            "hosted_logins = true\nrequire_binding = false",
        );
    })
    .await;
    let login = t
        .request("login", json!({ "provider": "oidc", "hosted": true }))
        .await;
    let login = login.ok().clone();
    let (cookie, provider_url) = open_start(login["authorization_url"].as_str().unwrap()).await;
    let query = FakeIdp::browse(&provider_url).await.unwrap();
    assert_eq!(back_at_callback(&base, &query, None).await.status(), 400);
    // The browser comes back twice at once (a reload): one spends the state and finishes
    // the login; the other is refused, and tells the app nothing.
    let (a, b) = tokio::join!(
        back_at_callback(&base, &query, Some(&cookie)),
        back_at_callback(&base, &query, Some(&cookie))
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400]);
    let done = wait(&t, &login["handle"]).await;
    assert_eq!(done.ok()["status"], "done", "{}", done.body);
}

#[tokio::test]
async fn on_https_the_cookie_is_host_only_and_secure() {
    // The listener speaks plain HTTP behind a proxy that ends TLS: the cookie follows the
    // public URL's scheme.
    let port = lanyard_tests::nats::free_port().unwrap();
    let t = TestDaemon::start_with(|config| {
        *config = config.replace(
            "redirect_uris = [\"http://app.test/callback\", \"http://app.test/other\"]",
            "redirect_uris = [\"https://login.app.test/callback\"]\nhosted_logins = true",
        );
        config.push_str(&format!(
            "\n[hosted]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"https://login.app.test\"\n"
        ));
    })
    .await;
    let login = t
        .request("login", json!({ "provider": "oidc", "hosted": true }))
        .await;
    let page = login.ok()["authorization_url"].as_str().unwrap().to_owned();
    let path = page.strip_prefix("https://login.app.test").unwrap();
    let start = browser()
        .post(format!("http://127.0.0.1:{port}{path}"))
        .header("origin", "https://login.app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 303);
    let cookie = start.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("__Host-lanyard_")
            && cookie.contains("; Secure")
            && cookie.contains("Path=/;")
            && !cookie.contains("Domain"),
        "{cookie}"
    );
}

#[tokio::test]
async fn a_refusal_at_the_provider_shows_and_reaches_the_app() {
    let (t, base) = start_hosted(|_| {}).await;
    t.idp.set(|k| k.deny = true);
    let login = t
        .request("login", json!({ "provider": "oidc", "hosted": true }))
        .await;
    let login = login.ok().clone();
    let (cookie, provider_url) = open_start(login["authorization_url"].as_str().unwrap()).await;
    let query = FakeIdp::browse(&provider_url).await.unwrap();
    let page = back_at_callback(&base, &query, Some(&cookie)).await;
    assert_eq!(page.status(), 403);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Sign-in cancelled") && html.contains("access_denied"),
        "{html}"
    );
    // The provider's own words are not put on the page.
    assert!(!html.contains("the user said no"), "{html}");
    assert_eq!(wait(&t, &login["handle"]).await.code(), "access_denied");
}

#[tokio::test]
async fn an_allowed_return_to_is_where_the_browser_goes_after() {
    let (t, base) = start_hosted(|_| {}).await;
    let login = t
        .request(
            "login",
            json!({ "provider": "oidc", "hosted": true, "return_to": "https://app.test/welcome" }),
        )
        .await;
    let login = login.ok().clone();
    let (cookie, provider_url) = open_start(login["authorization_url"].as_str().unwrap()).await;
    let query = FakeIdp::browse(&provider_url).await.unwrap();
    let page = back_at_callback(&base, &query, Some(&cookie)).await;
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "https://app.test/welcome");
    assert_eq!(wait(&t, &login["handle"]).await.ok()["status"], "done");
}

#[tokio::test]
async fn an_expired_hosted_login_says_so() {
    let (t, _) = start_hosted(|config| {
        *config = format!("pending_ttl_secs = 1\n{config}");
    })
    .await;
    let login = t
        .request("login", json!({ "provider": "oidc", "hosted": true }))
        .await;
    let login = login.ok().clone();
    // Only a lower bound on time: the login cannot be younger than this once it is over.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let page = browser()
        .get(login["authorization_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 410);
    assert!(page.text().await.unwrap().contains("login_expired"));
    assert_eq!(wait(&t, &login["handle"]).await.code(), "login_expired");
}

#[tokio::test]
async fn hosted_requests_are_refused_with_their_codes() {
    let (t, base) = start_hosted(|_| {}).await;
    // With its own redirect_uri; through an instance that does not allow the hosted callback.
    for body in [
        json!({ "provider": "oidc", "hosted": true, "redirect_uri": "http://app.test/callback" }),
        json!({ "provider": "github", "hosted": true }),
    ] {
        let refused = t.request("login", body.clone()).await;
        assert_eq!(refused.code(), "bad_request", "{body}: {}", refused.body);
    }
    // Pages that do not exist, a start page nobody made, a callback with a state of no
    // hosted login (a normal login's, whose redirect URI a service set to ours).
    for path in ["/", "/login/short", &format!("/login/{}", "ab".repeat(32))] {
        let page = browser().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(page.status(), 404, "{path}");
        assert_guarded(&page);
    }
    let normal = t
        .request(
            "login",
            json!({ "provider": "oidc", "redirect_uri": format!("{base}/callback") }),
        )
        .await;
    let query = FakeIdp::browse(normal.ok()["authorization_url"].as_str().unwrap())
        .await
        .unwrap();
    let page = back_at_callback(&base, &query, None).await;
    assert_eq!(page.status(), 400);
    // Not spent by that: the service's own callback still finishes it.
    let finished = t
        .request(
            "callback",
            json!({ "query": query, "binding": normal.body["binding"],
                    "redirect_uri": format!("{base}/callback") }),
        )
        .await;
    finished.ok();
    let garbage = back_at_callback(&base, "state=garbage&code=x", None).await;
    assert_eq!(garbage.status(), 400);
    let long = back_at_callback(&base, &format!("state={}", "a".repeat(9000)), None).await;
    assert_eq!(long.status(), 414);
    // A device handle is not a hosted login's, and the other way round.
    let unknown = t
        .request("login.wait", json!({ "handle": "nope", "timeout_secs": 0 }))
        .await;
    assert_eq!(unknown.code(), "not_found");
}

#[tokio::test]
async fn hosted_logins_need_the_hosted_pages() {
    let t = TestDaemon::start().await;
    let refused = t
        .request("login", json!({ "provider": "oidc", "hosted": true }))
        .await;
    assert_eq!(refused.code(), "bad_request");
    assert!(refused.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("[hosted]"));
}

/// The whole hosted login in headless Chromium, driven as a user would: Lanyard's start
/// page (read, then "Continue" clicked), the provider's sign-in page, back to Lanyard's page
/// (the binding cookie sent by the browser itself), and the waiting app gets its session.
/// Each page's screenshot is written to `target/screenshots/` for people to look at.
#[tokio::test]
async fn a_hosted_login_in_a_real_browser() {
    let (t, _) = start_hosted(|_| {}).await;
    t.idp.set(|k| k.login_page = true);
    t.idp
        .set_user(lanyard_tests::TestUser::from_email("chromium@example.test"));
    let login = t
        .request("login", json!({ "provider": "oidc", "hosted": true }))
        .await;
    let login = login.ok().clone();
    let start = login["authorization_url"].as_str().unwrap();
    let mut browser = lanyard_tests::browser::DrivenBrowser::open(start)
        .await
        .unwrap();
    browser
        .wait_for("document.title === 'Sign in' && !!document.querySelector('form button')")
        .await
        .unwrap();
    let text = browser.evaluate("document.body.innerText").await.unwrap();
    assert!(
        text.as_str()
            .unwrap()
            .contains("Continue only if you started this sign-in"),
        "{text}"
    );
    shoot(&mut browser, "hosted-start").await;
    browser
        .evaluate("document.querySelector('form button').click(), true")
        .await
        .unwrap();
    let done = wait(&t, &login["handle"]).await;
    assert_eq!(
        done.ok()["user"]["email"],
        "chromium@example.test",
        "{}",
        done.body
    );
    browser
        .wait_for("document.title === 'You are signed in'")
        .await
        .unwrap();
    shoot(&mut browser, "hosted-signed-in").await;
    // The provider showed its sign-in page, whose form came back to it.
    assert_eq!(t.idp.arrivals("/authorize"), 2);

    // The same link again, in this browser: the login is over, the page says so.
    browser
        .call("Page.navigate", json!({ "url": start }))
        .await
        .unwrap();
    browser
        .wait_for("document.title === 'This sign-in link cannot be used'")
        .await
        .unwrap();
    shoot(&mut browser, "hosted-used-twice").await;
}

/// Writes what the browser shows to `target/screenshots/{name}.png`.
async fn shoot(browser: &mut lanyard_tests::browser::DrivenBrowser, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = lanyard_tests::harness::target_dir().join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}
