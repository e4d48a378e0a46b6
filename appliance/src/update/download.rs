//! Fetching a bundle over HTTPS, resuming with range requests.
//!
//! The installer reads a plain byte stream ([`std::io::Read`]) on a blocking
//! thread; [`fetch`] feeds it from the network. When a connection breaks,
//! the next request asks for `Range: bytes=<delivered>-`, so the installer
//! sees one unbroken stream and never a byte twice. A server that ignores
//! the range (answers 200) has the delivered prefix skipped instead.

use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tracing::{info, warn};

use super::UpdateError;

/// Tries for one bundle; each broken connection costs one.
const ATTEMPTS: u32 = 8;

/// Pause after the first failure, doubled after each next one.
const FIRST_PAUSE: Duration = Duration::from_millis(250);

/// Deadline for connecting and for the response head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline for the next piece of the body.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the bytes of a download go.
type Feed = mpsc::SyncSender<io::Result<Bytes>>;

/// The reading end of a download, for the blocking installer.
#[derive(Debug)]
pub struct Stream {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    uri: Uri,
    tls: Arc<rustls::ClientConfig>,
    runtime: tokio::runtime::Handle,
}

impl Stream {
    fn start(
        uri: Uri,
        tls: Arc<rustls::ClientConfig>,
        runtime: tokio::runtime::Handle,
        from: u64,
    ) -> Self {
        // A few pieces in flight are enough to keep the network busy while
        // the installer writes; more would only hold memory.
        let (tx, rx) = mpsc::sync_channel(8);
        runtime.spawn(run(uri.clone(), Arc::clone(&tls), tx, from));
        Self {
            rx,
            current: Bytes::new(),
            uri,
            tls,
            runtime,
        }
    }
}

impl super::BundleSource for Stream {
    /// Drops what is in flight (the fetch notices and stops) and fetches the
    /// rest of the bundle from `offset` with a range request.
    fn resume_at(&mut self, offset: u64) -> io::Result<()> {
        *self = Self::start(
            self.uri.clone(),
            Arc::clone(&self.tls),
            self.runtime.clone(),
            offset,
        );
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(Ok(piece)) => self.current = piece,
                Ok(Err(e)) => return Err(e),
                // The fetcher is done: end of stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Trust for the update server's certificate.
pub fn client_config(extra_root: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, UpdateError> {
    let mut roots = rustls::RootCertStore::empty();
    match extra_root {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| UpdateError::State(format!("{}: {e}", path.display())))?
            {
                let cert =
                    cert.map_err(|e| UpdateError::State(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| UpdateError::State(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(UpdateError::State(
                    "no trusted root certificates on the system".to_owned(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpdateError::State(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Starts fetching `url`; the returned stream yields the bundle's bytes.
pub fn fetch(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Stream, UpdateError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| UpdateError::State(format!("{url}: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(UpdateError::State(format!(
            "{url}: only https:// is fetched"
        )));
    }
    Ok(Stream::start(
        uri,
        tls,
        tokio::runtime::Handle::current(),
        0,
    ))
}

/// Feeds the bundle from byte `from` on.
async fn run(uri: Uri, tls: Arc<rustls::ClientConfig>, feed: Feed, from: u64) {
    let mut delivered = from;
    let mut pause = FIRST_PAUSE;
    for attempt in 1..=ATTEMPTS {
        match attempt_once(&uri, &tls, delivered, &feed).await {
            Ok(Outcome::Finished) => return,
            Ok(Outcome::ReaderGone) => return,
            Err(Attempt {
                sent,
                error,
                permanent,
            }) => {
                delivered += sent;
                warn!(%uri, attempt, delivered, %error, "download interrupted");
                if permanent || attempt == ATTEMPTS {
                    let _ = feed.send(Err(io::Error::other(format!(
                        "download failed after {ATTEMPTS} attempts: {error}"
                    ))));
                    return;
                }
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
}

enum Outcome {
    Finished,
    ReaderGone,
}

/// A failed attempt, with how many bytes it delivered before failing.
struct Attempt {
    sent: u64,
    error: String,
    /// Trying again cannot help: an untrusted server, a refused request.
    permanent: bool,
}

impl Attempt {
    fn failed(error: impl ToString) -> Self {
        Self {
            sent: 0,
            error: error.to_string(),
            permanent: false,
        }
    }

    fn permanent(error: impl ToString) -> Self {
        Self {
            permanent: true,
            ..Self::failed(error)
        }
    }

    fn after(sent: u64, error: impl ToString) -> Self {
        Self {
            sent,
            ..Self::failed(error)
        }
    }
}

async fn attempt_once(
    uri: &Uri,
    tls: &Arc<rustls::ClientConfig>,
    from: u64,
    feed: &Feed,
) -> Result<Outcome, Attempt> {
    let response = tokio::time::timeout(REQUEST_TIMEOUT, request(uri, tls, from))
        .await
        .map_err(|_| Attempt::failed("no response in time"))??;
    let mut skip = match response.status() {
        StatusCode::PARTIAL_CONTENT if starts_at(&response, from) => 0,
        StatusCode::OK => from,
        status if status.is_client_error() => {
            return Err(Attempt::permanent(format!("server answered {status}")))
        }
        status => return Err(Attempt::failed(format!("server answered {status}"))),
    };
    if from > 0 {
        info!(from, skip, "resuming download");
    }

    let mut body = response.into_body();
    let mut sent = 0u64;
    loop {
        let frame = match tokio::time::timeout(STALL_TIMEOUT, body.frame()).await {
            Err(_) => return Err(Attempt::after(sent, "download stalled")),
            Ok(None) => return Ok(Outcome::Finished),
            Ok(Some(Err(e))) => return Err(Attempt::after(sent, e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        let dropped = usize::try_from(skip).unwrap_or(usize::MAX).min(data.len());
        let _ = data.split_to(dropped);
        skip -= dropped as u64;
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if feed.send(Ok(data)).is_err() {
            // The installer stopped reading: it failed or finished early.
            return Ok(Outcome::ReaderGone);
        }
    }
}

/// Largest channel document read.
const MAX_DOCUMENT: usize = 64 * 1024;

/// Fetches a small document (the channel's) whole, in one request.
pub async fn fetch_document(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Bytes, UpdateError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| UpdateError::State(format!("{url}: {e}")))?;
    let failed = |error: String| UpdateError::State(format!("{url}: {error}"));
    let response = tokio::time::timeout(REQUEST_TIMEOUT, request(&uri, tls, 0))
        .await
        .map_err(|_| failed("no response in time".into()))?
        .map_err(|a| failed(a.error))?;
    if response.status() != StatusCode::OK {
        return Err(failed(format!("server answered {}", response.status())));
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_DOCUMENT);
    let collected = tokio::time::timeout(STALL_TIMEOUT, body.collect())
        .await
        .map_err(|_| failed("document stalled".into()))?
        .map_err(|e| failed(e.to_string()))?;
    Ok(collected.to_bytes())
}

/// Whether a 206 answer starts where the request asked (RFC 9110 §14.4).
fn starts_at<B>(response: &http::Response<B>, from: u64) -> bool {
    response
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split_once('-'))
        .and_then(|(start, _)| start.parse::<u64>().ok())
        == Some(from)
}

async fn request(
    uri: &Uri,
    tls: &Arc<rustls::ClientConfig>,
    from: u64,
) -> Result<http::Response<hyper::body::Incoming>, Attempt> {
    let host = uri
        .host()
        .ok_or_else(|| Attempt::permanent("no host in the url"))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| Attempt::failed(format!("connecting to {host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|e| Attempt::permanent(format!("{host}: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| tls_failure(&host, e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Attempt::failed)?;
    tokio::spawn(connection);

    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    // RFC 9110 §7.2: Host carries the port when it is not the default.
    let authority = uri.authority().map_or(host.as_str(), |a| a.as_str());
    let mut builder = Request::get(path).header(header::HOST, authority);
    if from > 0 {
        builder = builder.header(header::RANGE, format!("bytes={from}-"));
    }
    let request = builder
        .body(Empty::<Bytes>::new())
        .map_err(Attempt::permanent)?;
    sender.send_request(request).await.map_err(Attempt::failed)
}

/// A certificate the configured roots do not vouch for will not be trusted
/// on the next try either; a handshake cut by the network might work.
fn tls_failure(host: &str, error: io::Error) -> Attempt {
    let message = format!("tls with {host}: {error}");
    let is_tls = error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
    if is_tls {
        Attempt::permanent(message)
    } else {
        Attempt::failed(message)
    }
}
