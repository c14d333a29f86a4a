//! Builds the XDP program (../xdp-filter) for bpfel-unknown-none and hands its path to the
//! crate as DOTS_XDP_OBJECT, so `cargo build` yields one binary with the object embedded.
//!
//! Why not aya-build: the eBPF target needs `-Z build-std=core`, hence rust-src, which only
//! Debian's rustc-web toolchain has on these machines (rustup's has none and cannot fetch it).
//! aya-build would switch to `rustup run nightly`. So this script calls Debian's cargo and
//! rustc explicitly, with rustup's directory off PATH. `scripts/setup.sh` installs them.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let ebpf_dir = root.join("xdp-filter");
    let common_dir = root.join("xdp-common");
    for p in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-env-changed=DOTS_BPF_CARGO");
    println!("cargo:rerun-if-env-changed=DOTS_BPF_RUSTC");

    let cargo = env::var("DOTS_BPF_CARGO").unwrap_or_else(|_| "/usr/bin/cargo".into());
    let rustc = env::var("DOTS_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    for (what, path) in [("cargo", &cargo), ("rustc", &rustc)] {
        if !Path::new(path).exists() {
            panic!(
                "\n\nThe XDP program needs Debian's rustc-web toolchain ({what} at {path} is missing).\n\
                 Run `sudo scripts/setup.sh` once (it installs rustc-web, rust-web-src and bpf-linker).\n"
            );
        }
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let target_dir = out_dir.join("bpf-target");

    // A clean environment: nothing of the outer (rustup) build may leak into the inner one.
    let home = env::var("HOME").unwrap_or_else(|_| "/root".into());
    let mut cmd = Command::new(&cargo);
    cmd.env_clear()
        .current_dir(&ebpf_dir)
        .env("HOME", &home)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    if let Ok(cargo_home) = env::var("CARGO_HOME") {
        cmd.env("CARGO_HOME", cargo_home);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {cargo}: {e}"));
    if !status.success() {
        panic!(
            "\n\nBuilding the XDP program failed (see the output above).\n\
             If bpf-linker is missing or built for another LLVM, run `sudo scripts/setup.sh`.\n"
        );
    }
    let object = target_dir.join("bpfel-unknown-none/release/xdp-filter");
    println!("cargo:rustc-env=DOTS_XDP_OBJECT={}", object.display());
}
