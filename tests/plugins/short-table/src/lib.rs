//! Test fixture: exports `lanyard_provider_entry_v1` with the right ABI version but a table
//! that claims to be shorter than ABI v1's, as a truncated or hand-made table would. Only the
//! two header fields exist; the host must refuse it without reading further.

/// Just the header every ABI version starts with.
#[derive(Debug)]
#[repr(C)]
pub struct Header {
    abi_version: u32,
    table_size: u32,
}

static TABLE: Header = Header {
    abi_version: 1,
    table_size: 8,
};

#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn lanyard_provider_entry_v1() -> *const Header {
    &TABLE
}
