//! Test fixture: exports `lanyard_provider_entry_v1` but claims ABI version 99, as a plugin
//! built against a future, incompatible SDK would. Its file name does not match the plugin
//! pattern, so only tests that copy it into a plugin directory ever load it.
#![allow(unsafe_code)]

use lanyard_provider_sdk::abi::{AbiBuf, AbiStr, ProviderTableV1};

unsafe extern "C" fn call(_: u32, _: *const u8, _: usize, _: *mut AbiBuf) -> i32 {
    // Never reached: the host must refuse the table before calling anything.
    3
}

unsafe extern "C" fn free(_: AbiBuf) {}

const KIND: &str = "future";
const VERSION: &str = "9.0.0";

static TABLE: ProviderTableV1 = ProviderTableV1 {
    abi_version: 99,
    table_size: std::mem::size_of::<ProviderTableV1>() as u32,
    kind: AbiStr {
        ptr: KIND.as_ptr(),
        len: KIND.len(),
    },
    plugin_version: AbiStr {
        ptr: VERSION.as_ptr(),
        len: VERSION.len(),
    },
    call,
    free,
};

#[no_mangle]
pub extern "C" fn lanyard_provider_entry_v1() -> *const ProviderTableV1 {
    &TABLE
}
