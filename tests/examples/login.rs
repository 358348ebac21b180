//! `make demo`: a whole login against a running `make run`, the way a service would do it,
//! with the fake identity provider playing the user's browser. Prints each step.
//!
//! It uses the same NATS requests any language's client would send:
//! `lanyard.v1.login` → (browser at the provider) → `lanyard.v1.callback`.

use lanyard_tests::FakeIdp;
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let provider = std::env::args().nth(1).unwrap_or_else(|| "dev".into());
    let nats = async_nats::connect(&url).await?;

    let login = json!({ "provider": provider, "return_to": "/welcome" });
    println!("→ lanyard.v1.login {login}");
    let reply = nats
        .request("lanyard.v1.login", login.to_string().into())
        .await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    println!("← {}\n", serde_json::to_string_pretty(&reply)?);
    let authorization_url = reply["authorization_url"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("login failed: {reply}"))?;
    // The service keeps the login's binding in the browser that started it: its redirect to
    // the provider sets
    //   Set-Cookie: __Host-lanyard_binding=<binding>; HttpOnly; Secure; SameSite=Lax; Path=/
    let binding = reply["binding"].as_str().unwrap_or_default();
    println!(
        "  (service) 302 to the provider, Set-Cookie: __Host-lanyard_binding={binding}; HttpOnly; \
         Secure; SameSite=Lax; Path=/\n"
    );

    // The user's browser visits the provider, which redirects back with code and state.
    let query = FakeIdp::browse(authorization_url).await?;
    println!("  (browser) the provider redirected back with ?{query}\n");

    // The browser comes back to /callback with its cookie, and the service's callback handler
    // sends it along. A callback link planted in another browser (login CSRF) comes without
    // it, and Lanyard refuses it.
    let cookie_header = format!("__Host-lanyard_binding={binding}");
    let binding = cookie_header
        .split("; ")
        .find_map(|c| c.strip_prefix("__Host-lanyard_binding="))
        .unwrap_or_default();
    let callback = json!({ "query": query, "binding": binding });
    println!("→ lanyard.v1.callback {callback}");
    let reply = nats
        .request("lanyard.v1.callback", callback.to_string().into())
        .await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    println!("← {}", serde_json::to_string_pretty(&reply)?);
    Ok(())
}
