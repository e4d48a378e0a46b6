//! `edge-bundle` end to end in a temporary directory: keygen, build,
//! verify, inspect, and the failures an operator must be able to read.

use std::path::PathBuf;
use std::process::{Command, Output};

const CHUNK: usize = 4096;

struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    /// A directory with a key pair, a kernel of 3.5 chunks and a rootfs of
    /// 6 chunks and a bit, all random.
    fn new() -> Dir {
        let dir = Dir {
            tmp: tempfile::tempdir().expect("tempdir"),
        };
        dir.ok(&["keygen", "--out", &dir.s("keys")]);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for (name, len) in [
            ("kernel.img", CHUNK * 7 / 2),
            ("rootfs.img", CHUNK * 6 + 99),
        ] {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            std::fs::write(dir.path(name), bytes).expect("write payload");
        }
        dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A path in the directory as an argument.
    fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_edge-bundle"))
            .args(args)
            .output()
            .expect("runs edge-bundle")
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs and requires failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8(out.stderr).expect("utf-8 stderr")
    }

    fn build(&self, out: &str) -> String {
        self.ok(&[
            "build",
            "--key",
            &self.s("keys/bundle-signing.pem"),
            "--kernel",
            &self.s("kernel.img"),
            "--rootfs",
            &self.s("rootfs.img"),
            "--compatible",
            "edge-qemu-aarch64",
            "--version",
            "1.2.3",
            "--security-version",
            "5",
            "--chunk-size",
            "4096",
            "--out",
            &self.s(out),
        ])
    }

    fn verify(&self, bundle: &str) -> Output {
        self.run(&[
            "verify",
            "--pubkey",
            &self.s("keys/bundle-signing.pub"),
            &self.s(bundle),
        ])
    }
}

#[test]
fn keygen_writes_a_key_pair_and_never_overwrites() {
    let dir = Dir::new();
    let public = std::fs::read_to_string(dir.path("keys/bundle-signing.pub")).expect("pub");
    assert!(public.starts_with("edge-ed25519 "));
    let private = std::fs::read_to_string(dir.path("keys/bundle-signing.pem")).expect("pem");
    assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path("keys/bundle-signing.pem"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let err = dir.fails(&["keygen", "--out", &dir.s("keys")]);
    assert!(err.contains("bundle-signing.pem"), "{err}");
}

#[test]
fn build_then_verify_and_inspect() {
    let dir = Dir::new();
    let built = dir.build("update.bundle");
    assert!(built.contains("version 1.2.3"), "{built}");
    assert!(!dir.path("update.partial").exists());

    let out = dir.verify("update.bundle");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    dir.ok(&[
        "verify",
        "--pubkey",
        &dir.s("keys/bundle-signing.pub"),
        "--compatible",
        "edge-qemu-aarch64",
        "--min-security-version",
        "5",
        &dir.s("update.bundle"),
    ]);

    let shown = dir.ok(&["inspect", &dir.s("update.bundle")]);
    assert!(shown.contains("NOT CHECKED"), "{shown}");
    assert!(shown.contains("security version  5"), "{shown}");
    assert!(shown.contains("rootfs"), "{shown}");
}

#[test]
fn tampered_payload_fails_naming_the_chunk() {
    let dir = Dir::new();
    dir.build("update.bundle");
    let mut bytes = std::fs::read(dir.path("update.bundle")).expect("read");
    // The rootfs is last: this byte is in its chunk 3.
    let rootfs_start = bytes.len() - (CHUNK * 6 + 99);
    bytes[rootfs_start + 3 * CHUNK + 10] ^= 0x01;
    std::fs::write(dir.path("tampered.bundle"), bytes).expect("write");

    let out = dir.verify("tampered.bundle");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("chunk 3 of payload rootfs does not match"),
        "{err}"
    );
}

#[test]
fn wrong_key_fails_as_unknown_key() {
    let dir = Dir::new();
    dir.build("update.bundle");
    dir.ok(&["keygen", "--out", &dir.s("other")]);
    let err = dir.fails(&[
        "verify",
        "--pubkey",
        &dir.s("other/bundle-signing.pub"),
        &dir.s("update.bundle"),
    ]);
    assert!(err.contains("signed by unknown key"), "{err}");
}

#[test]
fn truncated_bundle_fails() {
    let dir = Dir::new();
    dir.build("update.bundle");
    let bytes = std::fs::read(dir.path("update.bundle")).expect("read");
    for (name, len) in [("short-head", 50), ("short-tail", bytes.len() - 1)] {
        std::fs::write(dir.path(name), &bytes[..len]).expect("write");
        let out = dir.verify(name);
        assert!(!out.status.success(), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("truncated"), "{name}: {err}");
    }
}

#[test]
fn policy_failures_are_named() {
    let dir = Dir::new();
    dir.build("update.bundle");
    let pubkey = &dir.s("keys/bundle-signing.pub");
    let bundle = &dir.s("update.bundle");
    let err = dir.fails(&[
        "verify",
        "--pubkey",
        pubkey,
        "--compatible",
        "edge-rpi4",
        bundle,
    ]);
    assert!(err.contains("bundle is for \"edge-qemu-aarch64\""), "{err}");
    let err = dir.fails(&[
        "verify",
        "--pubkey",
        pubkey,
        "--min-security-version",
        "6",
        bundle,
    ]);
    assert!(err.contains("security version 5 is below"), "{err}");
}

#[test]
fn invalid_spec_leaves_no_file() {
    let dir = Dir::new();
    let err = dir.fails(&[
        "build",
        "--key",
        &dir.s("keys/bundle-signing.pem"),
        "--kernel",
        &dir.s("kernel.img"),
        "--rootfs",
        &dir.s("rootfs.img"),
        "--compatible",
        "edge-qemu-aarch64",
        "--version",
        "v1",
        "--security-version",
        "1",
        "--out",
        &dir.s("bad.bundle"),
    ]);
    assert!(err.contains("semantic version"), "{err}");
    assert!(!dir.path("bad.bundle").exists());
    assert!(!dir.path("bad.partial").exists());
}
