//! Links the shared library the way a system C library is linked: soname
//! from the major version in Cargo.toml, and a version script (`dmio.map`)
//! so that only the public `dm_io_*` symbols are exported. Linked
//! `-z nodelete`: the engine threads that clients share live for the
//! process (`client/shared.rs`), so `dlclose` must not unmap their code.
fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets the manifest dir");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libdmio.so.{major}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={dir}/dmio.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rerun-if-changed=dmio.map");
    println!("cargo:rerun-if-changed=build.rs");
}
