//! Certificate files replaced under a running mux: new handshakes get the new
//! certificate, established connections carry on, broken files change nothing.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mux::config::{CertFileConfig, MuxConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// Replaces `path` the way deployment tools do: write aside, then rename over.
fn replace_file(path: &Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).expect("write");
    std::fs::rename(&aside, path).expect("rename");
}

async fn served_leaf(mux: &Running) -> rustls::pki_types::CertificateDer<'static> {
    let client = any_cert_client(&["h2"]);
    let tls = connect(mux.addr, client, "app.example.org")
        .await
        .expect("handshake");
    common::served_leaf(&tls)
}

#[tokio::test]
async fn replaced_files_are_served_without_dropping_connections() {
    let pki = Pki::new();
    let first = pki.leaf(&["app.example.org"]);
    let second = pki.leaf(&["app.example.org"]);
    let dir = std::env::temp_dir().join(format!("mux-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let files = CertFileConfig {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        names: None,
    };
    replace_file(&files.cert, &first.cert_pem);
    replace_file(&files.key, &first.key_pem);

    let store = store(
        &pki,
        mux::reload::load_files(std::slice::from_ref(&files)).expect("load"),
    );
    let mux = start_mux(MuxConfig::default(), store).await;
    let hup = Arc::new(Notify::new());
    let reloader = tokio::spawn(mux::reload::run(
        vec![files.clone()],
        Arc::clone(&mux.store),
        Arc::clone(&mux.metrics),
        Arc::clone(&hup),
    ));
    assert_eq!(served_leaf(&mux).await, first.der);

    // A long connection, established with the first certificate.
    let client = verifying_client(&pki.ca, &["h2"]);
    let mut long = connect(mux.addr, client, "app.example.org")
        .await
        .expect("handshake");
    assert!(read_tag(&mut long).await.starts_with("https "));

    replace_file(&files.key, &second.key_pem);
    replace_file(&files.cert, &second.cert_pem);
    let mut switched = false;
    for _ in 0..250 {
        if served_leaf(&mux).await == second.der {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(switched, "the new certificate is served within 10 s");

    // Reading the files is not a change: with nothing written, the reload
    // count stays where it is.
    let ok = "mux_certificate_reloads_total{reason=\"ok\"}";
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = metric(&mux.metrics, ok);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metric(&mux.metrics, ok), settled, "reloads with no change");

    long.write_all(b"still here").await.expect("write");
    let mut echo = [0u8; 10];
    long.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"still here");

    // A broken file is refused as a whole; SIGHUP's path retries it too.
    replace_file(&files.cert, "not a certificate");
    hup.notify_one();
    let metrics = Arc::clone(&mux.metrics);
    let counted = eventually(Duration::from_secs(10), || {
        metric(&metrics, "mux_certificate_reloads_total{reason=\"error\"}") >= 1.0
    })
    .await;
    assert!(counted, "{}", metrics_text(&metrics));
    assert_eq!(served_leaf(&mux).await, second.der);

    reloader.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
