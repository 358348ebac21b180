//! `make demo-hosted`: a login through Lanyard's hosted pages against a running `make run`,
//! the way a desktop app that can open a browser but receive nothing would do it: it prints
//! the start page's URL, and waits. Open the URL in a browser: the dev provider signs you in,
//! Lanyard's page says you are signed in, and the app has its session.
//! `make demo-hosted DEMO_ARGS=--approve` plays the browser too.
//!
//! The NATS requests any language's client would send:
//! `lanyard.v1.login` with `hosted` → (the browser) → `lanyard.v1.login.wait`, repeated.

use std::time::Duration;

use serde_json::{json, Value};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let approve = std::env::args().any(|a| a == "--approve");
    let nats = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(35)))
        .connect(&url)
        .await?;

    let login = json!({ "provider": "dev", "hosted": true });
    println!("→ lanyard.v1.login {login}");
    let reply = nats
        .request("lanyard.v1.login", login.to_string().into())
        .await?;
    let started: Value = serde_json::from_slice(&reply.payload)?;
    println!("← {}\n", serde_json::to_string_pretty(&started)?);
    let Some(page) = started["authorization_url"].as_str() else {
        anyhow::bail!("login failed: {started}");
    };
    println!("  Open {page} in a browser\n");
    if approve {
        play_the_browser(page).await?;
    }

    loop {
        let wait = json!({ "handle": started["handle"], "timeout_secs": 25 });
        println!("→ lanyard.v1.login.wait {{\"handle\": \"…\", \"timeout_secs\": 25}}");
        let reply = nats
            .request("lanyard.v1.login.wait", wait.to_string().into())
            .await?;
        let reply: Value = serde_json::from_slice(&reply.payload)?;
        if reply["status"] == "pending" {
            println!("← pending (still waiting for the browser)");
            continue;
        }
        println!("← {}", serde_json::to_string_pretty(&reply)?);
        return Ok(());
    }
}

/// What a browser does: Lanyard's start page, its "Continue" (a cookie, then the provider),
/// the provider (straight back, for the dev user), Lanyard's callback with the cookie.
async fn play_the_browser(page: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let shown = http.get(page).send().await?;
    println!(
        "  (browser) Lanyard's start page: {}; the user clicks Continue",
        shown.status()
    );
    // As the browser posts the page's form: from the page itself.
    let start = http
        .post(page)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await?;
    let cookie = start
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_owned();
    let location = |r: &reqwest::Response| {
        r.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("{} without a Location", r.status()))
    };
    let provider = http.get(location(&start)?).send().await?;
    let back = location(&provider)?;
    let done = http.get(back).header("cookie", cookie).send().await?;
    println!("  (browser) Lanyard's page: {}\n", done.status());
    Ok(())
}
