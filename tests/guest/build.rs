//! Links the guest at the start of its RAM (guest.ld), where the hypervisor loads it.
fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "none" && arch == "aarch64" {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        let script = format!("{dir}/guest.ld");
        println!("cargo:rustc-link-arg-bins=-T{script}");
        println!("cargo:rerun-if-changed={script}");
    }
}
