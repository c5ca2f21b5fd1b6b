//! Builds every plugin in `plugins/` (its own cargo workspace) for wasm32-wasip2, so tests
//! run the real components of this checkout. The inner cargo gets a target directory of its
//! own (`<outer target>/<profile>/wasm-plugins`): sharing the outer one would deadlock on
//! its build lock. Environment that describes the outer build is removed first, or it would
//! leak into the guest build (host RUSTFLAGS, clippy's wrapper, the outer jobserver...).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Variables the outer cargo sets (or a user sets for the host build) that must not reach
/// the inner build.
const STRIP: &[&str] = &[
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_LLVM_COV",
    "CARGO_LLVM_COV_TARGET_DIR",
    "LLVM_PROFILE_FILE",
    "__CARGO_FIX_PLZ",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let repo = manifest_dir.join("../../..");
    let repo = repo.canonicalize().unwrap_or(repo);
    for watched in [
        "plugins",
        "sdk/plugin",
        "sdk/plugin-abi",
        "wit",
        "rust-toolchain.toml",
    ] {
        println!("cargo:rerun-if-changed={}", repo.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=SLUICE_WASM_PLUGINS_CARGO_ARGS");

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    // One inner target directory per checkout: two checkouts sharing an outer target
    // directory (a CI clone beside a working tree) would otherwise overwrite each other's
    // components under the same names, each build thinking its own still current.
    let checkout = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        repo.hash(&mut h);
        h.finish()
    };
    let target_dir = out_dir
        .ancestors()
        .nth(3)
        .unwrap_or(&out_dir)
        .join(format!("wasm-plugins-{checkout:016x}"));

    ensure_wasm_target();
    build(&repo.join("plugins"), &target_dir);

    let dir = target_dir.join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=SLUICE_WASM_PLUGINS_DIR={}", dir.display());
}

const WASM_TARGET: &str = "wasm32-wasip2";

/// rustup installs a toolchain file's `targets` only when it installs the toolchain itself:
/// where the pinned toolchain is already present without the wasm target, add it here, so
/// `cargo build` and `cargo test` work on such a machine with no step by hand.
fn ensure_wasm_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(sysroot) = &sysroot
        && sysroot.join("lib/rustlib").join(WASM_TARGET).is_dir()
    {
        return;
    }
    // Under rustup, cargo runs with RUSTUP_TOOLCHAIN naming the active toolchain.
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", WASM_TARGET]);
    if let Some(toolchain) = std::env::var_os("RUSTUP_TOOLCHAIN") {
        cmd.arg("--toolchain").arg(toolchain);
    }
    cmd.stdout(Stdio::from(std::io::stderr()));
    match cmd.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!(
            "the {WASM_TARGET} target is missing and `rustup target add {WASM_TARGET}` failed \
             ({status}); the built-in plugins need it. Add it by hand and build again."
        ),
        Err(e) => panic!(
            "the {WASM_TARGET} target is missing from the toolchain at {} and rustup cannot be \
             run ({e}). Without rustup, install the Rust standard library for {WASM_TARGET} \
             for this compiler (e.g. your distribution's rust-std package for it) and build again.",
            sysroot
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(unknown sysroot)".into())
        ),
    }
}

fn build(plugins: &Path, target_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(plugins)
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--manifest-path",
        ])
        .arg(plugins.join("Cargo.toml"))
        // Cargo reads build-script stdout as instructions: send the inner build's to stderr.
        .stdout(Stdio::from(std::io::stderr()));
    if let Ok(extra) = std::env::var("SLUICE_WASM_PLUGINS_CARGO_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    for var in STRIP {
        cmd.env_remove(var);
    }
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_CFG_")
            || k.starts_with("CARGO_FEATURE_")
            || k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || k.starts_with("DEP_")
        {
            cmd.env_remove(&*k);
        }
    }
    // After the removals: CARGO_TARGET_DIR is one of them.
    cmd.env("CARGO_TARGET_DIR", target_dir);
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot run cargo to build the wasm plugins in {}: {e}",
            plugins.display()
        )
    });
    if !status.success() {
        panic!(
            "building the wasm plugins failed ({status}); see the output above. It needs the \
             wasm32-wasip2 target (`rustup target add wasm32-wasip2`, or let rustup install it \
             from rust-toolchain.toml)"
        );
    }
}
