//! Links the kernels at the address the QEMU boot protocol expects (boot/<arch>.ld), and embeds
//! the guest kernel `cargo xtask` built (its ELF path in `IOMMU_TEST_GUEST`; without it, an
//! empty image, and the guest tests skip).
fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "none" {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        let script = format!("{dir}/../../boot/{arch}.ld");
        println!("cargo:rustc-link-arg-bins=-T{script}");
        println!("cargo:rerun-if-changed={script}");
    }
    println!("cargo:rerun-if-env-changed=IOMMU_TEST_GUEST");
    let guest = match std::env::var("IOMMU_TEST_GUEST") {
        Ok(path) if !path.is_empty() => path,
        _ => {
            let out = std::env::var("OUT_DIR").unwrap_or_default();
            let path = format!("{out}/no-guest");
            if let Err(e) = std::fs::write(&path, []) {
                panic!("cannot write {path}: {e}");
            }
            path
        }
    };
    println!("cargo:rerun-if-changed={guest}");
    println!("cargo:rustc-env=IOMMU_TEST_GUEST_IMAGE={guest}");
}
