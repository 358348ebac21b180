//! `make demo-device`: a device-flow login (RFC 8628) against a running `make run`, the way
//! a command-line tool would do it: it prints a code and a URL, and waits. Open the URL in a
//! browser (the dev provider's page), enter the code, and the tool is signed in.
//! `make demo-device DEMO_ARGS=--approve` plays the user too.
//!
//! The NATS requests any language's client would send:
//! `lanyard.v1.device.start` → (the user, elsewhere) → `lanyard.v1.device.wait`, repeated.

use std::time::Duration;

use serde_json::{json, Value};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let approve = std::env::args().any(|a| a == "--approve");
    let provider = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "dev".into());
    let nats = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(35)))
        .connect(&url)
        .await?;

    let start = json!({ "provider": provider, "client": "make demo-device" });
    println!("→ lanyard.v1.device.start {start}");
    let reply = nats
        .request("lanyard.v1.device.start", start.to_string().into())
        .await?;
    let started: Value = serde_json::from_slice(&reply.payload)?;
    println!("← {}\n", serde_json::to_string_pretty(&started)?);
    let (Some(uri), Some(code)) = (
        started["verification_uri"].as_str(),
        started["user_code"].as_str(),
    ) else {
        anyhow::bail!("device.start failed: {started}");
    };
    println!("  Open {uri} in a browser and enter the code {code}");
    if let Some(complete) = started["verification_uri_complete"].as_str() {
        println!("  (or open {complete})");
        if approve {
            // Playing the user, signed in at the provider, who approves.
            let page = reqwest::get(complete).await?;
            println!("  (user) {} at the provider", page.status());
        }
    }
    println!();

    loop {
        let wait = json!({ "handle": started["handle"], "timeout_secs": 25 });
        println!("→ lanyard.v1.device.wait {{\"handle\": \"…\", \"timeout_secs\": 25}}");
        let reply = nats
            .request("lanyard.v1.device.wait", wait.to_string().into())
            .await?;
        let reply: Value = serde_json::from_slice(&reply.payload)?;
        if reply["status"] == "pending" {
            println!("← pending (still waiting for the user)");
            continue;
        }
        println!("← {}", serde_json::to_string_pretty(&reply)?);
        return Ok(());
    }
}
