//! An update server on the host's loopback: HTTPS with a certificate of its
//! own test CA, serving one bundle with range support and, optionally, a
//! channel document naming it. It can cut its first bundle response short,
//! the way a dropped connection would, and records every bundle request.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::PrivateKeyDer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::Error;

/// Path of the bundle on the server.
pub const BUNDLE_PATH: &str = "/edge.bundle";

/// Path of the channel document on the server.
pub const CHANNEL_PATH: &str = "/channel.json";

/// What the server offers.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    /// The bundle's bytes.
    pub bundle: Vec<u8>,
    /// `(version, compatible)` for a channel document; none: no channel.
    pub channel: Option<(String, String)>,
    /// Cut the first bundle response after this many body bytes.
    pub cut_first_after: Option<usize>,
}

/// A running server; it stops with the test process.
#[derive(Debug)]
pub struct UpdateServer {
    addr: SocketAddr,
    ca_pem: String,
    ranges: Arc<Mutex<Vec<Option<u64>>>>,
    channel_reads: Arc<std::sync::atomic::AtomicUsize>,
}

impl UpdateServer {
    /// Starts serving `offer` on 127.0.0.1 with a certificate for `names`
    /// (the addresses clients use to reach it).
    pub fn start(offer: Offer, names: &[IpAddr]) -> Result<Self, Error> {
        let (ca_pem, config) = tls(names)?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let channel_reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counts = Counts {
            ranges: Arc::clone(&ranges),
            channel_reads: Arc::clone(&channel_reads),
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(serve(listener, acceptor, offer, counts));
            }
        });
        Ok(Self {
            addr,
            ca_pem,
            ranges,
            channel_reads,
        })
    }

    /// Where it listens on the host.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM of the CA that signed its certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// How many times the channel document was read.
    pub fn channel_reads(&self) -> usize {
        self.channel_reads.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The `Range` start of every bundle request so far (`None`: whole file).
    pub fn bundle_requests(&self) -> Vec<Option<u64>> {
        self.ranges.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn tls(names: &[IpAddr]) -> Result<(String, Arc<rustls::ServerConfig>), Error> {
    let failed = |e: rcgen::Error| Error::Command(format!("test certificate: {e}"));
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().map_err(failed)?;
    let ca = ca_params.self_signed(&ca_key).map_err(failed)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().map_err(failed)?;
    let names: Vec<String> = names.iter().map(IpAddr::to_string).collect();
    let leaf = CertificateParams::new(names)
        .map_err(failed)?
        .signed_by(&leaf_key, &issuer)
        .map_err(failed)?;
    let key = PrivateKeyDer::try_from(leaf_key.serialize_der())
        .map_err(|e| Error::Command(format!("test key: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(vec![leaf.der().clone()], key)
        })
        .map_err(|e| Error::Command(format!("test server: {e}")))?;
    Ok((ca.pem(), Arc::new(config)))
}

/// What the serving thread records.
struct Counts {
    ranges: Arc<Mutex<Vec<Option<u64>>>>,
    channel_reads: Arc<std::sync::atomic::AtomicUsize>,
}

/// One request's head: path, `Host`, `Range` start.
struct Head {
    path: String,
    host: String,
    range: Option<u64>,
}

async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut BufReader<S>) -> Option<Head> {
    let mut head = Head {
        path: String::new(),
        host: String::new(),
        range: None,
    };
    let mut first = true;
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some(head);
        }
        if first {
            head.path = line.split_whitespace().nth(1)?.to_owned();
            first = false;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(host) = lower.strip_prefix("host:") {
            head.host = host.trim().to_owned();
        }
        if let Some(range) = lower.strip_prefix("range: bytes=") {
            head.range = range.trim().trim_end_matches('-').parse().ok();
        }
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    offer: Offer,
    counts: Counts,
) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut cut = offer.cut_first_after;
    while let Ok((tcp, _)) = listener.accept().await {
        let Ok(tls) = acceptor.accept(tcp).await else {
            continue;
        };
        let mut stream = BufReader::new(tls);
        let Some(head) = read_head(&mut stream).await else {
            continue;
        };
        let (status, extra, body) = answer(&offer, &head, &counts);
        let mut reply = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
        reply.push_str(&extra);
        reply.push_str("Connection: close\r\n\r\n");
        let send = match (head.path.as_str(), cut.take()) {
            (BUNDLE_PATH, Some(n)) => &body[..n.min(body.len())],
            (BUNDLE_PATH, None) => &body[..],
            (_, taken) => {
                cut = taken;
                &body[..]
            }
        };
        let tls = stream.get_mut();
        let _ = tls.write_all(reply.as_bytes()).await;
        let _ = tls.write_all(send).await;
        let _ = tls.flush().await;
        // Dropped without close_notify: a cut response ends early for the client.
    }
}

fn answer(offer: &Offer, head: &Head, counts: &Counts) -> (String, String, Vec<u8>) {
    match (head.path.as_str(), &offer.channel) {
        (CHANNEL_PATH, Some((version, compatible))) => {
            counts
                .channel_reads
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let url = format!("https://{}{BUNDLE_PATH}", head.host);
            let doc =
                format!(r#"{{"version":"{version}","compatible":"{compatible}","url":"{url}"}}"#);
            ("200 OK".into(), String::new(), doc.into_bytes())
        }
        (BUNDLE_PATH, _) => {
            if let Ok(mut seen) = counts.ranges.lock() {
                seen.push(head.range);
            }
            let len = offer.bundle.len();
            match head.range.and_then(|from| usize::try_from(from).ok()) {
                Some(from) if from < len => (
                    "206 Partial Content".into(),
                    format!("Content-Range: bytes {from}-{}/{len}\r\n", len - 1),
                    offer.bundle[from..].to_vec(),
                ),
                _ => ("200 OK".into(), String::new(), offer.bundle.clone()),
            }
        }
        _ => ("404 Not Found".into(), String::new(), Vec::new()),
    }
}
