//! `lanyard-fake-idp`: the test kit's identity provider as a standalone dev server, so a
//! newcomer can log in locally without any cloud account. It approves every login as the
//! configured user (or the email given as `login_hint`).

use clap::Parser;
use lanyard_tests::{FakeIdp, TestUser};

#[derive(Debug, Parser)]
#[command(about = "A local OAuth2 / OpenID Connect provider for development and tests")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8788")]
    listen: String,
    #[arg(long, default_value = "lanyard-dev")]
    client_id: String,
    #[arg(long, env = "FAKE_IDP_CLIENT_SECRET", default_value = "dev-secret")]
    client_secret: String,
    /// The email of the user every login signs in as.
    #[arg(long, default_value = "dev@example.test")]
    user: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let idp = FakeIdp::start_on(&args.listen, &args.client_id, &args.client_secret).await?;
    idp.set_user(TestUser::from_email(&args.user));
    eprintln!(
        "lanyard-fake-idp: issuer {} (GitHub-style API at {}), signing in as {}",
        idp.issuer(),
        idp.api_url(),
        args.user
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
