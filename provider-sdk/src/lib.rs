//! The plugin author's side of Lanyard's provider boundary: the v1 C-ABI table, the JSON
//! operation types, the safe [`Provider`] trait and the [`export_provider!`] macro.
//!
//! A provider plugin is a `cdylib` crate. It never does I/O: the Lanyard daemon makes every
//! HTTP request, runs PKCE, state and nonce, and verifies ID-token signatures. The plugin only
//! *describes* the provider and turns the provider's JSON into Lanyard's canonical [`Profile`].
//!
//! # A complete minimal plugin
//!
//! ```
//! use lanyard_provider_sdk::{
//!     export_provider, Description, Endpoints, MapProfileInput, Profile, Protocol, Provider,
//!     ProviderError, HttpRequest, ProfileRequestsInput,
//! };
//!
//! #[derive(Default)]
//! pub struct Acme;
//!
//! impl Provider for Acme {
//!     const KIND: &'static str = "acme";
//!
//!     fn describe(&self) -> Description {
//!         Description {
//!             display_name: "Acme".into(),
//!             protocol: Protocol::OAuth2,
//!             default_scopes: vec!["profile".into()],
//!             endpoints: Some(Endpoints {
//!                 authorization_url: Some("https://id.acme.test/authorize".into()),
//!                 token_url: Some("https://id.acme.test/token".into()),
//!                 ..Endpoints::default()
//!             }),
//!             ..Description::default()
//!         }
//!     }
//!
//!     fn profile_requests(
//!         &self,
//!         _input: &ProfileRequestsInput,
//!     ) -> Result<Vec<HttpRequest>, ProviderError> {
//!         Ok(vec![HttpRequest::get("me", "https://api.acme.test/me")])
//!     }
//!
//!     fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
//!         let me = input.response("me")?;
//!         Ok(Profile {
//!             subject: me["id"].to_string(),
//!             email: me["email"].as_str().map(str::to_owned),
//!             email_verified: me["email_verified"].as_bool().unwrap_or(false),
//!             name: me["name"].as_str().map(str::to_owned),
//!             raw: me.clone(),
//!             ..Profile::default()
//!         })
//!     }
//! }
//!
//! export_provider!(Acme);
//! ```
//!
//! # What the ABI promises
//!
//! * One exported symbol, [`ENTRY_SYMBOL`], returns a pointer to a static [`ProviderTableV1`].
//!   The host checks [`ProviderTableV1::abi_version`] and [`ProviderTableV1::table_size`] before
//!   touching anything else. Later versions only append fields to the table.
//! * Payloads are JSON in both directions. Unknown JSON fields are ignored on both sides, so a
//!   newer host can send more than an older plugin knows and the other way round.
//! * Memory is freed by the side that allocated it: the host owns the input, the plugin owns
//!   the output buffer until the host hands it back through [`ProviderTableV1::free`].
//! * Every call runs inside `catch_unwind`: a panic becomes [`Status::Panic`], never an abort.
//!   Build plugins with the default `panic = "unwind"`.

pub mod abi;
pub mod testing;
mod types;

pub use abi::{Op, ProviderTableV1, Status, ABI_VERSION, ENTRY_SYMBOL};
pub use types::*;

/// A provider plugin. Implement it on a `Default` struct and export it with
/// [`export_provider!`]. Only [`describe`](Provider::describe) and
/// [`map_profile`](Provider::map_profile) are required; the other operations have defaults
/// that suit a plain OAuth2 or OpenID Connect provider.
///
/// Every method must be pure: no I/O, no threads, no global mutable state. The same plugin
/// serves many configured instances; each call carries the instance's settings.
pub trait Provider: Default + Send + Sync + 'static {
    /// The plugin's kind, as operators write it in `kind = "..."`.
    const KIND: &'static str;

    /// What this provider is and which settings it accepts.
    fn describe(&self) -> Description;

    /// Resolves an instance's endpoints from its settings (a tenant, a self-hosted base URL,
    /// an issuer). The default returns the endpoints of [`describe`](Provider::describe).
    fn configure(&self, input: &ConfigureInput) -> Result<Endpoints, ProviderError> {
        let _ = input;
        self.describe().endpoints.ok_or_else(|| {
            ProviderError::invalid_config("this provider needs configure() to resolve endpoints")
        })
    }

    /// Extra query parameters for the authorization URL. The default passes `login_hint` and
    /// `prompt` through under their OpenID Connect names.
    fn authorize_params(&self, input: &AuthorizeInput) -> Result<AuthorizeParams, ProviderError> {
        let mut out = AuthorizeParams::default();
        if let Some(hint) = &input.login_hint {
            out.params.insert("login_hint".into(), hint.clone());
        }
        if let Some(prompt) = &input.prompt {
            out.params.insert("prompt".into(), prompt.clone());
        }
        Ok(out)
    }

    /// The HTTP requests the host should make, with the user's access token, after the token
    /// exchange. Their responses reach [`map_profile`](Provider::map_profile) by name.
    fn profile_requests(
        &self,
        input: &ProfileRequestsInput,
    ) -> Result<Vec<HttpRequest>, ProviderError> {
        let _ = input;
        Ok(Vec::new())
    }

    /// Turns ID-token claims and profile responses into the canonical profile.
    fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError>;

    /// Extra ID-token claim rules, checked after the host's own validation.
    fn check_claims(&self, input: &CheckClaimsInput) -> Result<(), ProviderError> {
        let _ = input;
        Ok(())
    }
}

/// Exports a [`Provider`] implementation as a Lanyard plugin (the `lanyard_provider_entry_v1`
/// symbol). Call it once per plugin crate.
#[macro_export]
macro_rules! export_provider {
    ($provider:ty) => {
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn lanyard_provider_entry_v1() -> *const $crate::abi::ProviderTableV1 {
            #[allow(unsafe_code)]
            unsafe extern "C" fn call(
                op: u32,
                input: *const u8,
                input_len: usize,
                out: *mut $crate::abi::AbiBuf,
            ) -> i32 {
                static PROVIDER: ::std::sync::OnceLock<$provider> = ::std::sync::OnceLock::new();
                // SAFETY: the host passes a readable input of `input_len` bytes and a writable
                // `out`, as the ABI requires; `dispatch` forwards exactly that contract.
                unsafe {
                    $crate::abi::dispatch(
                        || PROVIDER.get_or_init(<$provider as ::std::default::Default>::default),
                        op,
                        input,
                        input_len,
                        out,
                    )
                }
            }
            static TABLE: $crate::abi::ProviderTableV1 = $crate::abi::ProviderTableV1::new(
                <$provider as $crate::Provider>::KIND,
                env!("CARGO_PKG_VERSION"),
                call,
            );
            &TABLE
        }
    };
}
