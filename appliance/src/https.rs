//! The HTTPS service behind the mux: health now, status page and SFU signalling later.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mux::service::{BoxFuture, BoxStream, ConnInfo, Service};
use tracing::debug;

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 and h2 on terminated streams.
#[derive(Debug, Clone)]
pub struct Https {
    router: Router,
}

impl Https {
    /// The service with its routes.
    pub fn new() -> Arc<Self> {
        let router = Router::new().route("/healthz", get(|| async { "ok" }));
        Arc::new(Self { router })
    }
}

impl Service for Https {
    fn serve(&self, stream: BoxStream, info: ConnInfo) -> BoxFuture {
        let service = TowerToHyperService::new(self.router.clone());
        Box::pin(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            builder.http2().timer(TokioTimer::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(peer = %info.peer, error = %e, "https connection ended");
            }
        })
    }
}
