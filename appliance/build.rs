//! Records the revision the binary is built from, for `edge --version`.
//!
//! `EDGE_GIT_REV` wins when set: release tarballs (and the Buildroot package
//! built from them) have no `.git` to ask.
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=EDGE_GIT_REV");
    let rev = std::env::var("EDGE_GIT_REV")
        .ok()
        .filter(|rev| !rev.is_empty())
        .unwrap_or_else(git_rev);
    println!("cargo:rustc-env=EDGE_GIT_REV={rev}");
    // Only a checkout has these; naming a missing file would rebuild the
    // crate on every cargo invocation.
    for file in ["../.git/HEAD", "../.git/index"] {
        if Path::new(file).exists() {
            println!("cargo:rerun-if-changed={file}");
        }
    }
}

fn git_rev() -> String {
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned());
    let Some(rev) = rev else {
        return "unknown".to_owned();
    };
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|out| !out.stdout.is_empty());
    if dirty {
        format!("{rev}-dirty")
    } else {
        rev
    }
}
