//! The v1 C-ABI table shared by plugins and the host, and the plugin-side dispatcher behind
//! [`export_provider!`](crate::export_provider). This is the only module of the SDK with
//! `unsafe` code.
#![allow(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Provider, ProviderError};

/// The ABI version this SDK speaks. The host refuses a table with any other version.
pub const ABI_VERSION: u32 = 1;

/// The one symbol a plugin exports, NUL-terminated for `dlsym`.
pub const ENTRY_SYMBOL: &[u8] = b"lanyard_provider_entry_v1\0";

/// The signature of [`ENTRY_SYMBOL`].
pub type EntryFn = unsafe extern "C" fn() -> *const ProviderTableV1;

/// The signature of [`ProviderTableV1::call`].
pub type CallFn =
    unsafe extern "C" fn(op: u32, input: *const u8, input_len: usize, out: *mut AbiBuf) -> i32;

/// The signature of [`ProviderTableV1::free`].
pub type FreeFn = unsafe extern "C" fn(buf: AbiBuf);

/// A borrowed UTF-8 string with static lifetime inside the plugin.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AbiStr {
    pub ptr: *const u8,
    pub len: usize,
}

/// A byte buffer allocated by the plugin; only the plugin's `free` may release it.
#[repr(C)]
#[derive(Debug)]
pub struct AbiBuf {
    pub ptr: *mut u8,
    pub len: usize,
    pub cap: usize,
}

impl AbiBuf {
    /// An empty buffer, for the host to pass as `out`.
    pub const fn empty() -> Self {
        Self {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }

    fn from_vec(bytes: Vec<u8>) -> Self {
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        Self {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            cap: bytes.capacity(),
        }
    }
}

/// The table a plugin's entry point returns. Fields are only ever appended; `table_size`
/// tells the host how much of it this plugin has.
#[repr(C)]
#[derive(Debug)]
pub struct ProviderTableV1 {
    /// Must equal [`ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<ProviderTableV1>()` as the plugin was built.
    pub table_size: u32,
    /// The provider kind, e.g. `github`.
    pub kind: AbiStr,
    /// The plugin crate's version.
    pub plugin_version: AbiStr,
    /// Runs one [`Op`] on JSON input; writes JSON output to `out`; returns a [`Status`].
    pub call: CallFn,
    /// Releases a buffer that `call` wrote.
    pub free: FreeFn,
}

// SAFETY: the table only holds pointers to `'static` string data and function pointers; it is
// never mutated after construction.
unsafe impl Sync for ProviderTableV1 {}

impl ProviderTableV1 {
    /// Builds the table for a plugin; used by [`export_provider!`](crate::export_provider).
    pub const fn new(kind: &'static str, plugin_version: &'static str, call: CallFn) -> Self {
        Self {
            abi_version: ABI_VERSION,
            table_size: std::mem::size_of::<Self>() as u32,
            kind: AbiStr {
                ptr: kind.as_ptr(),
                len: kind.len(),
            },
            plugin_version: AbiStr {
                ptr: plugin_version.as_ptr(),
                len: plugin_version.len(),
            },
            call,
            free: free_buf,
        }
    }
}

/// The operations of the v1 ABI.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Describe = 1,
    Configure = 2,
    AuthorizeParams = 3,
    ProfileRequests = 4,
    MapProfile = 5,
    CheckClaims = 6,
}

impl Op {
    /// The operation's name, for logs and errors.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Describe => "describe",
            Op::Configure => "configure",
            Op::AuthorizeParams => "authorize_params",
            Op::ProfileRequests => "profile_requests",
            Op::MapProfile => "map_profile",
            Op::CheckClaims => "check_claims",
        }
    }

    fn from_u32(op: u32) -> Option<Self> {
        Some(match op {
            1 => Op::Describe,
            2 => Op::Configure,
            3 => Op::AuthorizeParams,
            4 => Op::ProfileRequests,
            5 => Op::MapProfile,
            6 => Op::CheckClaims,
            _ => return None,
        })
    }
}

/// What `call` returns.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `out` holds the operation's JSON result.
    Ok = 0,
    /// `out` holds a JSON [`ProviderError`].
    Error = 1,
    /// The plugin panicked; `out` holds the panic message as a JSON string.
    Panic = 2,
    /// The operation number is unknown to this plugin; `out` is empty.
    UnknownOp = 3,
    /// The input was not valid JSON for the operation; `out` holds the message as a JSON string.
    BadInput = 4,
}

impl Status {
    /// Decodes a status code returned across the ABI.
    pub const fn from_i32(code: i32) -> Option<Self> {
        Some(match code {
            0 => Status::Ok,
            1 => Status::Error,
            2 => Status::Panic,
            3 => Status::UnknownOp,
            4 => Status::BadInput,
            _ => return None,
        })
    }
}

unsafe extern "C" fn free_buf(buf: AbiBuf) {
    if !buf.ptr.is_null() {
        // SAFETY: `buf` was produced by `AbiBuf::from_vec` in this same library, so pointer,
        // length and capacity describe a live `Vec<u8>` allocation that nothing else owns.
        drop(unsafe { Vec::from_raw_parts(buf.ptr, buf.len, buf.cap) });
    }
}

/// Runs one operation for the provider `get` returns. Used by
/// [`export_provider!`](crate::export_provider); not meant to be called directly.
///
/// # Safety
/// `input` must point to `input_len` readable bytes (or be null with `input_len == 0`) and
/// `out` must point to a writable [`AbiBuf`], both for the duration of the call.
pub unsafe fn dispatch<'a, P: Provider>(
    get: impl FnOnce() -> &'a P,
    op: u32,
    input: *const u8,
    input_len: usize,
    out: *mut AbiBuf,
) -> i32 {
    let bytes: &[u8] = if input.is_null() || input_len == 0 {
        &[]
    } else {
        // SAFETY: the caller guarantees `input` points to `input_len` readable bytes.
        unsafe { std::slice::from_raw_parts(input, input_len) }
    };
    let (status, payload) = call_guarded(get, op, bytes);
    // SAFETY: the caller guarantees `out` is writable.
    unsafe { out.write(AbiBuf::from_vec(payload)) };
    status as i32
}

/// One operation on JSON bytes, exactly as across the ABI: unknown ops refused, panics caught
/// and turned into [`Status::Panic`] with the panic's message.
pub(crate) fn call_guarded<'a, P: Provider>(
    get: impl FnOnce() -> &'a P,
    op: u32,
    input: &[u8],
) -> (Status, Vec<u8>) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let Some(op) = Op::from_u32(op) else {
            return (Status::UnknownOp, Vec::new());
        };
        run_op(get(), op, input)
    }));
    result.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "plugin panicked".to_owned());
        (Status::Panic, json_bytes(&message))
    })
}

fn run_op<P: Provider>(provider: &P, op: Op, input: &[u8]) -> (Status, Vec<u8>) {
    match op {
        Op::Describe => {
            let mut description = provider.describe();
            description.kind = P::KIND.to_owned();
            (Status::Ok, json_bytes(&description))
        }
        Op::Configure => with_input(input, |i| provider.configure(&i)),
        Op::AuthorizeParams => with_input(input, |i| provider.authorize_params(&i)),
        Op::ProfileRequests => with_input(input, |i| provider.profile_requests(&i)),
        Op::MapProfile => with_input(input, |i| provider.map_profile(&i)),
        Op::CheckClaims => with_input(input, |i| {
            provider
                .check_claims(&i)
                .map(|()| serde_json::Value::Object(Default::default()))
        }),
    }
}

fn with_input<I: DeserializeOwned, O: Serialize>(
    input: &[u8],
    f: impl FnOnce(I) -> Result<O, ProviderError>,
) -> (Status, Vec<u8>) {
    match serde_json::from_slice::<I>(input) {
        Err(error) => (Status::BadInput, json_bytes(&error.to_string())),
        Ok(input) => match f(input) {
            Ok(output) => (Status::Ok, json_bytes(&output)),
            Err(error) => (Status::Error, json_bytes(&error)),
        },
    }
}

fn json_bytes<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serialising our own plain data types cannot fail; fall back to `null` rather than panic.
    serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Description, MapProfileInput, Profile};

    #[derive(Default)]
    struct Touchy;

    impl Provider for Touchy {
        const KIND: &'static str = "touchy";

        fn describe(&self) -> Description {
            Description {
                display_name: "Touchy".into(),
                ..Description::default()
            }
        }

        fn map_profile(&self, input: &MapProfileInput) -> Result<Profile, ProviderError> {
            match input.claims.as_ref().and_then(|c| c["sub"].as_str()) {
                Some("panic") => panic!("asked to panic"),
                Some(sub) => Ok(Profile {
                    subject: sub.into(),
                    ..Profile::default()
                }),
                None => Err(ProviderError::invalid_profile("no sub")),
            }
        }
    }

    /// Calls `dispatch` as the host would, returning the status and the output bytes.
    fn call(op: u32, input: &[u8]) -> (i32, Vec<u8>) {
        let provider = Touchy;
        let mut out = AbiBuf::empty();
        // SAFETY: `input` and `out` are live for the call.
        let status = unsafe { dispatch(|| &provider, op, input.as_ptr(), input.len(), &mut out) };
        // SAFETY: `out` was written by `dispatch` in this library; copied, then freed once.
        let bytes = unsafe { std::slice::from_raw_parts(out.ptr, out.len) }.to_vec();
        unsafe { free_buf(out) };
        (status, bytes)
    }

    #[test]
    fn describe_carries_the_kind() {
        let (status, out) = call(Op::Describe as u32, b"{}");
        assert_eq!(status, Status::Ok as i32);
        let description: Description = serde_json::from_slice(&out).unwrap();
        assert_eq!(description.kind, "touchy");
        assert!(
            description.pkce,
            "PKCE is on unless a plugin says otherwise"
        );
    }

    #[test]
    fn results_errors_and_panics_come_back_as_statuses() {
        let (status, out) = call(Op::MapProfile as u32, br#"{"claims":{"sub":"42"}}"#);
        assert_eq!(status, Status::Ok as i32);
        assert_eq!(
            serde_json::from_slice::<Profile>(&out).unwrap().subject,
            "42"
        );

        let (status, out) = call(Op::MapProfile as u32, br#"{"claims":{}}"#);
        assert_eq!(status, Status::Error as i32);
        let error: ProviderError = serde_json::from_slice(&out).unwrap();
        assert_eq!(error.kind, crate::ErrorKind::InvalidProfile);

        let (status, out) = call(Op::MapProfile as u32, br#"{"claims":{"sub":"panic"}}"#);
        assert_eq!(status, Status::Panic as i32);
        assert_eq!(
            serde_json::from_slice::<String>(&out).unwrap(),
            "asked to panic"
        );

        let (status, _) = call(Op::MapProfile as u32, b"not json");
        assert_eq!(status, Status::BadInput as i32);
        let (status, out) = call(99, b"{}");
        assert_eq!((status, out.len()), (Status::UnknownOp as i32, 0));
    }

    #[test]
    fn unknown_fields_are_ignored_for_compatibility() {
        let (status, _) = call(
            Op::MapProfile as u32,
            br#"{"claims":{"sub":"1"},"from_a_newer_host":true}"#,
        );
        assert_eq!(status, Status::Ok as i32);
    }
}
