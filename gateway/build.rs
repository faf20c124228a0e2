//! Passes the target triple to the crate, for `gateway_build_info`.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=GATEWAY_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
