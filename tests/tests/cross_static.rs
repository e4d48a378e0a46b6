//! The cross-compiled `edge` is what the box runs: a static, stripped aarch64
//! executable that starts and serves its health check over TLS. Here it runs
//! under `qemu-aarch64-static` on the host, without booting a kernel.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use edge_tests::elf::{ElfFacts, EM_AARCH64};
use edge_tests::{edge_binary, free_port, wait_healthy, ProcessGuard, ScratchDir};

/// The binary goes into every image and every update bundle; past this size
/// something has pulled in more than the box needs.
const MAX_BINARY_BYTES: u64 = 16 * 1024 * 1024;

/// Under qemu-user the box needs a second or two to start; allow for a busy
/// machine.
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

#[test]
#[ignore = "needs the aarch64 build; run by ./dev test"]
fn binary_is_static_stripped_aarch64() {
    let path = edge_binary();
    let data = std::fs::read(&path).expect("read the edge binary (run ./dev build)");
    let facts = ElfFacts::parse(&data).expect("edge is a 64-bit ELF file");

    assert_eq!(facts.machine, EM_AARCH64, "edge is built for aarch64");
    assert!(!facts.has_interpreter, "edge asks for a dynamic loader");
    assert_eq!(facts.needed_libraries, 0, "edge needs shared libraries");
    assert!(!facts.has_symtab, "edge is not stripped");

    let size = data.len() as u64;
    assert!(
        size < MAX_BINARY_BYTES,
        "edge is {size} bytes, over {MAX_BINARY_BYTES}"
    );
    eprintln!(
        "edge binary: {size} bytes ({:.1} MiB)",
        size as f64 / 1048576.0
    );
}

#[test]
#[ignore = "needs the aarch64 build; run by ./dev test"]
fn version_runs_under_qemu_user() {
    let output = Command::new("qemu-aarch64-static")
        .arg(edge_binary())
        .arg("--version")
        .output()
        .expect("run qemu-aarch64-static (run ./dev deps)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "edge --version failed: {output:?}");

    // `edge <version> (<git rev>)`
    let line = stdout.lines().next().unwrap_or_default();
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("edge"), "{line:?}");
    let version = words.next().unwrap_or_default();
    let core = version.split(['-', '+']).next().unwrap_or_default();
    assert!(
        core.split('.').count() == 3
            && core
                .split('.')
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        "no semantic version in {line:?}"
    );
    let rev = words.next().unwrap_or_default();
    assert!(
        rev.starts_with('(') && rev.ends_with(')') && rev.len() > 2,
        "no git revision in {line:?}"
    );
}

#[test]
#[ignore = "needs the aarch64 build; run by ./dev test"]
fn serves_healthz_over_tls_under_qemu_user() {
    let scratch = ScratchDir::new("cross").expect("scratch directory");
    let port = free_port().expect("free port");
    let config = scratch.path().join("edge.toml");
    std::fs::write(&config, format!("[mux]\nlisten = \"127.0.0.1:{port}\"\n"))
        .expect("write the configuration");
    let log_path = scratch.path().join("edge.log");
    let log = std::fs::File::create(&log_path).expect("create the log file");

    let child = Command::new("qemu-aarch64-static")
        .arg(edge_binary())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("share the log file"))
        .stderr(log)
        .spawn()
        .expect("start edge under qemu-aarch64-static");
    let mut edge = ProcessGuard::new("edge (qemu-user)", child);

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let result = wait_healthy(addr, HEALTHY_WITHIN, &mut edge);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let (health, elapsed) = match result {
        Ok(answer) => answer,
        Err(e) => panic!("edge never became healthy: {e}\n--- edge log ---\n{log}"),
    };

    assert_eq!(health.status, 200);
    assert_eq!(&health.body[..], b"ok", "body of /healthz");
    assert!(
        !health.certificates.is_empty(),
        "edge presented no certificate"
    );
    eprintln!(
        "edge under qemu-user: healthy after {:.2} s over {:?}",
        elapsed.as_secs_f64(),
        health.protocol
    );
}
