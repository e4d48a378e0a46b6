//! The `edge` command line: version, configuration checking, and a real run
//! answering HTTPS health and metrics on loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use appliance::config::Config;

fn edge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge"))
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/edge.toml")
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edge-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn version_names_the_revision() {
    let out = edge().arg("--version").output().expect("run edge");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        text.starts_with(&format!("edge {} (", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
}

#[test]
fn the_example_configuration_is_valid_and_means_what_it_says() {
    let config = Config::load(&example()).expect("example parses");
    assert_eq!(config.mux.routes.len(), 2);
    assert_eq!(
        config.mux.routes[1].upstream.as_deref(),
        Some("127.0.0.1:8443")
    );
    assert!(config.mux.routes[1].proxy_protocol);
    let acme = config.tls.acme.expect("acme section");
    assert_eq!(acme.renew_before, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(config.metrics.edge_id.as_deref(), Some("edge-example-1"));
    let update = config.update.expect("update section");
    assert_eq!(update.compatible, "edge-rpi4-aarch64");
    assert_eq!(update.health_deadline, Duration::from_secs(300));
    let window = update.reboot_window.expect("reboot window");
    assert_eq!(window.to_string(), "02:00-04:00");

    let out = edge()
        .arg("check-config")
        .arg(example())
        .output()
        .expect("run edge");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_the_offending_key() {
    let cases = [
        (
            "[mux]\nlisten = \"0.0.0.0:443\"\nlisten_backlog = 5\n",
            "listen_backlog",
        ),
        (
            "[[mux.route]]\naction = \"passthrough\"\n",
            "mux.route[0].upstream",
        ),
        ("[mux]\nidle_timeout = \"forever\"\n", "idle_timeout"),
        (
            "[tls.acme]\ndirectory = \"http://x\"\ndomains = [\"a.example\"]\nstate_dir = \"/d\"\n",
            "tls.acme.directory",
        ),
        (
            "[update]\ncompatible = \"x\"\nreboot_window = \"2am-4am\"\n",
            "reboot_window",
        ),
        (
            "[update]\ncompatible = \"x\"\nreboot_window = \"03:00-03:00\"\n",
            "reboot_window",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = temp_file(&format!("bad{i}.toml"), text);
        let out = edge()
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("run edge");
        assert!(!out.status.success(), "accepted: {text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(key),
            "error for {text:?} does not name {key}: {err}"
        );
    }
}

/// The running box, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A configuration that only sets the mux's listener.
fn listen_only(port: u16) -> String {
    format!("[mux]\nlisten = \"127.0.0.1:{port}\"\n")
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTPS/1.1 request with a client that accepts the self-signed certificate.
fn https_get(port: u16, path: &str) -> String {
    try_https_get(port, path).expect("https request")
}

fn try_https_get(port: u16, path: &str) -> std::io::Result<String> {
    // Which certificate the box serves is the mux tests' business; this
    // one is about the box answering.
    let config = appliance::update::supervise::self_check_client();
    let name = rustls::pki_types::ServerName::try_from("edge.test").expect("name");
    let mut conn = rustls::ClientConnection::new(config, name).expect("client");
    let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    // The box closes without close_notify after `Connection: close`; what
    // was read until then is the response.
    let _ = tls.read_to_string(&mut response);
    Ok(response)
}

fn http_get(port: u16, path: &str) -> String {
    try_http_get(port, path).expect("http request")
}

fn try_http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    tcp.read_to_string(&mut response)?;
    Ok(response)
}

#[test]
fn run_serves_health_over_tls_and_metrics_in_plain_http() {
    let (port, metrics_port) = (free_port(), free_port());
    let config = format!(
        "[mux]\nlisten = \"127.0.0.1:{port}\"\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\nedge_id = \"test-edge\"\n"
    );
    let mut running = start_edge(&config, "run.toml", None);
    wait_for_port(port);

    let health = https_get(port, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok"), "{health}");

    wait_for_port(metrics_port);
    let metrics = http_get(metrics_port, "/metrics");
    assert!(
        metrics.contains("mux_handshakes_total{edge_id=\"test-edge\"} 1"),
        "{metrics}"
    );

    // SIGTERM ends the box cleanly.
    stop(&mut running);
}

/// Sends SIGTERM and expects a clean exit.
fn stop(running: &mut Running) {
    let pid = running.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = running.0.wait().expect("wait");
    assert!(status.success(), "{status:?}");
}

fn start_edge(config: &str, name: &str, nofile: Option<u32>) -> Running {
    let path = temp_file(name, config);
    let mut command = match nofile {
        // `prlimit` (util-linux) caps the descriptors of the box alone.
        Some(limit) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={limit}:{limit}"))
                .arg(env!("CARGO_BIN_EXE_edge"));
            c
        }
        None => edge(),
    };
    let child = command
        .arg("run")
        .arg("--config")
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .expect("start edge");
    Running(child)
}

/// `edge run --config CONFIG FLAG VALUE`, for the flags the system start
/// passes.
fn run_with_flag(config: &Path, flag: &str, value: &Path) -> Running {
    let child = edge()
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg(flag)
        .arg(value)
        .stderr(Stdio::null())
        .spawn()
        .expect("start edge");
    Running(child)
}

#[test]
fn descriptor_exhaustion_pauses_accepting_instead_of_crashing() {
    let (port, metrics_port) = (free_port(), free_port());
    // The peek limits are above the connections the test opens, so every
    // one of them stays pending and holds its descriptor: the box runs out
    // of descriptors whatever order its tasks run in.
    let config = format!(
        "[mux]\nlisten = \"127.0.0.1:{port}\"\npeek_timeout = \"3s\"\n\
         max_pending = 1000\nmax_pending_per_source = 1000\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
    );
    let mut running = start_edge(&config, "nofile.toml", Some(48));
    wait_for_port(port);
    wait_for_port(metrics_port);

    // More idle connections than the box has descriptors: the kernel
    // completes them from the backlog, accept() runs out of descriptors.
    let idle: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // While the box is out of descriptors, its metrics listener may be
        // too: a refused or reset request is retried.
        let metrics = try_http_get(metrics_port, "/metrics").unwrap_or_default();
        let errors = metrics
            .lines()
            .find_map(|l| l.strip_prefix("mux_accept_errors_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if errors > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no accept error counted:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(idle);

    // The peek deadline frees the descriptors; the box serves again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            running.0.try_wait().expect("wait").is_none(),
            "the box exited"
        );
        let health = try_https_get(port, "/healthz").unwrap_or_else(|e| e.to_string());
        if health.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "never served again: {health}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn no_udp_is_served_on_the_mux_port() {
    let port = free_port();
    let config = listen_only(port);
    let _running = start_edge(&config, "udp.toml", None);
    wait_for_port(port);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    udp.connect(("127.0.0.1", port)).expect("connect");
    udp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    udp.send(b"\x00\x01\x00\x00\x21\x12\xa4\x42probe-probe!")
        .expect("send");
    let mut buf = [0u8; 64];
    let err = udp.recv(&mut buf).expect_err("no answer over UDP");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "port unreachable"
    );
}

#[test]
fn run_with_an_unusable_configuration_exits_with_ex_config() {
    let path = temp_file("bad-run.toml", "[mux]\nlisten_on = 443\n");
    let out = edge()
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run edge");
    // The system start tells this apart from a crash (etc/init.d/edge).
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listen_on"), "{stderr}");
}

/// A regular file stands in for /dev/watchdog: edge writes its keep-alives
/// to it and, on SIGTERM, the magic `V` that disarms a real one.
#[test]
fn run_feeds_the_watchdog_and_disarms_it_on_a_clean_stop() {
    let port = free_port();
    let config = temp_file("watchdog.toml", &listen_only(port));
    let device = temp_file("watchdog", "");
    let mut running = run_with_flag(&config, "--watchdog", &device);
    wait_for_port(port);
    let fed = std::fs::read(&device).expect("read the stand-in");
    assert!(fed.starts_with(b"\n"), "{fed:?}");
    assert!(!fed.contains(&b'V'), "disarmed while running: {fed:?}");

    stop(&mut running);
    let fed = std::fs::read(&device).expect("read the stand-in");
    assert_eq!(fed.last(), Some(&b'V'), "{fed:?}");
}

#[test]
fn run_keeps_a_status_file_for_people() {
    let port = free_port();
    let config = temp_file("status.toml", &listen_only(port));
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("status.txt");
    let mut running = run_with_flag(&config, "--status-file", &path);
    wait_for_port(port);
    // The addresses line comes last, from a task of its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let status = std::fs::read_to_string(&path).unwrap_or_default();
        if status.contains("\naddresses:") || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    stop(&mut running);

    let version = format!("version:       {} (", env!("CARGO_PKG_VERSION"));
    assert!(status.contains(&version), "{status}");
    // This host's kernel command line names no slot.
    assert!(
        status.contains("slot:          unknown: not started by the edge boot script\n"),
        "{status}"
    );
    assert!(status.contains("\naddresses:     "), "{status}");
}
