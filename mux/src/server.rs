//! The tokio shell of the mux: listeners, limits, the peek, and the two actions.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info_span, warn, Instrument};

use crate::certs::ACME_TLS_ALPN;
use crate::config::{MuxConfig, ServiceName};
use crate::metrics::{Metrics, Reason, RouteMetrics, ServiceLabel};
use crate::peek::{ClientHello, HelloPeek, PeekError, MAX_PEEK_LEN};
use crate::proxy;
use crate::route::{Action, Route, RouteTable};
use crate::service::{sniff, ConnInfo, Services, Sniffed, SNIFF_LEN};
use crate::stream::{Activity, Prefixed, Tracked};

/// Shortest and longest pause after an accept error from resource exhaustion.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// Listen backlog of each listener.
const BACKLOG: i32 = 1024;

/// The mux: one per box, shared by its listeners.
pub struct Mux {
    config: MuxConfig,
    table: RouteTable,
    acceptor: TlsAcceptor,
    services: Services,
    metrics: Arc<Metrics>,
    /// Each route's series, at its [`Route::index`].
    route_metrics: Vec<RouteMetrics>,
    limits: Limits,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux")
            .field("listen", &self.config.listen)
            .field("routes", &self.table)
            .finish_non_exhaustive()
    }
}

impl Mux {
    /// A mux with a validated configuration, the TLS configuration every
    /// terminated route shares, and the services behind it.
    pub fn new(
        config: MuxConfig,
        tls: Arc<rustls::ServerConfig>,
        services: Services,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let limits = Limits::new(config.max_pending, config.max_pending_per_source);
        let table = RouteTable::new(&config);
        let route_metrics = table.iter().map(|r| metrics.route(&r.name)).collect();
        Arc::new(Self {
            table,
            acceptor: TlsAcceptor::from(tls),
            services,
            metrics,
            route_metrics,
            limits,
            config,
        })
    }

    /// Binds every configured address.
    pub fn bind(&self) -> io::Result<Vec<TcpListener>> {
        self.config.listen.iter().map(|addr| bind(*addr)).collect()
    }

    /// Accepts connections on `listener` forever.
    ///
    /// Running out of file descriptors or memory pauses accepting, doubling
    /// the pause up to a second, instead of ending the loop.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut backoff = ACCEPT_BACKOFF.0;
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    backoff = ACCEPT_BACKOFF.0;
                    self.metrics.accepted.inc();
                    let mux = Arc::clone(&self);
                    let span = info_span!("conn", %peer);
                    // Boxed here, the connection's state machine (some
                    // kilobytes) is written once; spawned by value, it
                    // would be copied at each layer of the spawn.
                    tokio::spawn(Box::pin(mux.handle(tcp, peer)).instrument(span));
                }
                Err(e) if is_exhaustion(&e) => {
                    self.metrics.accept_errors.inc();
                    warn!(error = %e, pause_ms = backoff.as_millis(), "accept failed, pausing");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                }
                Err(e) => debug!(error = %e, "accept failed"),
            }
        }
    }

    async fn handle(self: Arc<Self>, mut tcp: TcpStream, peer: SocketAddr) {
        // Both legs carry interactive traffic (handshakes, STUN, media over
        // TCP): Nagle's delay would add a round trip to each.
        let _ = tcp.set_nodelay(true);

        let Some(pending) = self.admit(peer) else {
            return;
        };
        let mut peek = Box::new(HelloPeek::new());
        let peeked = timeout(self.config.peek_timeout, read_hello(&mut tcp, &mut peek)).await;
        let hello = match peeked {
            Ok(Ok(hello)) => Some(hello),
            Ok(Err(failure)) => {
                self.peek_failed(failure.reason);
                if !failure.answer_as_tls {
                    return;
                }
                None
            }
            Err(_) => return self.peek_failed("timeout"),
        };
        drop(pending);

        let route = match &hello {
            Some(hello) => {
                self.metrics.hello_bytes.observe(hello.hello_len as f64);
                self.metrics.hello_records.observe(hello.records as f64);
                self.table.lookup(hello)
            }
            None => self.table.default_route(),
        };
        let route_metrics = &self.route_metrics[route.index];
        route_metrics.hits.inc();
        let _active = GaugeGuard::new(&route_metrics.active);
        let buffered = peek.buffered().to_vec();
        drop(peek);
        let sni = hello.as_ref().and_then(|h| h.server_name.as_deref());
        debug!(route = %route.name, ?sni, "routed");

        let activity = Activity::new();
        let tcp = Tracked::new(tcp, Arc::clone(&activity));
        let conn = Conn {
            peer,
            buffered,
            route,
        };
        let work = async {
            match &route.action {
                Action::Passthrough {
                    upstream,
                    proxy_protocol,
                } => {
                    self.passthrough(conn, tcp, upstream, *proxy_protocol, &activity)
                        .await
                }
                Action::Terminate(service) => self.terminate(conn, tcp, *service).await,
            }
        };
        if activity
            .run_until_idle(self.config.idle_timeout, work)
            .await
            .is_none()
        {
            debug!("idle timeout");
        }
    }

    fn admit(&self, peer: SocketAddr) -> Option<Pending> {
        match self.limits.admit(peer.ip(), &self.metrics) {
            Ok(pending) => Some(pending),
            Err(reason) => {
                self.peek_failed(reason);
                None
            }
        }
    }

    fn peek_failed(&self, reason: &'static str) {
        debug!(reason, "closed before routing");
        self.metrics
            .peek_failures
            .get_or_create(&Reason { reason })
            .inc();
    }

    async fn passthrough(
        &self,
        conn: Conn<'_>,
        mut client: Tracked<TcpStream>,
        upstream: &str,
        proxy_protocol: bool,
        activity: &Arc<Activity>,
    ) {
        let mut head = Vec::with_capacity(conn.buffered.len() + 64);
        if proxy_protocol {
            // Asked for only here: a plain passthrough saves the system call.
            let Ok(local) = client.get_ref().local_addr() else {
                return;
            };
            head.extend_from_slice(&proxy::v2_header(conn.peer, local));
        }
        head.extend_from_slice(&conn.buffered);

        let connect = timeout(self.config.connect_timeout, connect_with(upstream, &head)).await;
        let (upstream_tcp, sent) = match connect {
            Ok(Ok(connected)) => connected,
            Ok(Err(e)) => return self.upstream_failed(&conn, &e.to_string()),
            Err(_) => return self.upstream_failed(&conn, "connect timeout"),
        };
        let mut upstream_tcp = Tracked::new(upstream_tcp, Arc::clone(activity));
        if let Err(e) = upstream_tcp.write_all(&head[sent..]).await {
            return self.upstream_failed(&conn, &e.to_string());
        }
        // copy_bidirectional shuts down each side's write half when the other
        // side's read half ends, so half-closes pass through in both directions.
        match tokio::io::copy_bidirectional(&mut client, &mut upstream_tcp).await {
            Ok((up, down)) => debug!(up, down, "passthrough closed"),
            Err(e) => debug!(error = %e, "passthrough ended"),
        }
    }

    fn upstream_failed(&self, conn: &Conn<'_>, why: &str) {
        warn!(route = %conn.route.name, why, "upstream unreachable");
        self.route_metrics[conn.route.index].upstream_failures.inc();
    }

    async fn terminate(
        &self,
        conn: Conn<'_>,
        tcp: Tracked<TcpStream>,
        service: Option<ServiceName>,
    ) {
        let stream = Prefixed::new(conn.buffered, tcp);
        let handshake = timeout(self.config.handshake_timeout, self.acceptor.accept(stream)).await;
        let mut tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return self.handshake_failed(tls_reason(&e), &e),
            Err(_) => return self.handshake_failed("timeout", &"deadline passed"),
        };
        self.metrics.handshakes.inc();
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let server_name = session.server_name().map(str::to_owned);

        if alpn.as_deref() == Some(ACME_TLS_ALPN) {
            // RFC 8737 §3: the validation handshake is the whole exchange.
            self.dispatched("acme");
            let _ = tls.shutdown().await;
            return;
        }

        let mut prefix = Vec::new();
        let service = match service.or_else(|| by_alpn(alpn.as_deref())) {
            Some(service) => service,
            None => {
                let sniffed = timeout(
                    self.config.handshake_timeout,
                    read_prefix(&mut tls, &mut prefix),
                )
                .await;
                match sniffed {
                    Ok(Ok(Sniffed::Stun)) => ServiceName::Turn,
                    Ok(Ok(_)) => ServiceName::Https,
                    Ok(Err(_)) | Err(_) => return self.dispatched("none"),
                }
            }
        };
        let Some(handler) = self.services.get(service) else {
            debug!(?service, "no service registered");
            return self.dispatched("none");
        };
        self.dispatched(match service {
            ServiceName::Https => "https",
            ServiceName::Turn => "turn",
        });
        // Asked for only now, off the handshake's path, and only for
        // connections a service takes.
        let Ok(local) = tls.get_ref().0.get_ref().get_ref().local_addr() else {
            return;
        };
        let info = ConnInfo {
            peer: conn.peer,
            local,
            server_name,
            alpn,
            route: Arc::clone(&conn.route.name),
        };
        handler
            .serve(Box::new(Prefixed::new(prefix, tls)), info)
            .await;
    }

    fn handshake_failed(&self, reason: &'static str, error: &dyn std::fmt::Display) {
        debug!(reason, %error, "handshake failed");
        self.metrics
            .handshake_failures
            .get_or_create(&Reason { reason })
            .inc();
    }

    fn dispatched(&self, service: &'static str) {
        self.metrics
            .dispatched
            .get_or_create(&ServiceLabel { service })
            .inc();
    }
}

/// A routed connection, before its action runs.
struct Conn<'a> {
    peer: SocketAddr,
    buffered: Vec<u8>,
    route: &'a Route,
}

/// Why the peek did not yield a hello.
struct PeekFailure {
    /// The metric reason.
    reason: &'static str,
    /// Hand the bytes to rustls anyway, so the client gets exactly the
    /// alert a plain rustls server would send for them, and the mux is not
    /// told apart from one by how it fails.
    answer_as_tls: bool,
}

/// Reads until the peek yields a hello.
///
/// Each read takes at most the room left in the peek buffer, so bytes that
/// follow the hello in the same segment are kept for the replay, never lost.
async fn read_hello(tcp: &mut TcpStream, peek: &mut HelloPeek) -> Result<ClientHello, PeekFailure> {
    let mut chunk = [0u8; 2048];
    loop {
        let room = MAX_PEEK_LEN.saturating_sub(peek.buffered().len());
        let want = room.clamp(1, chunk.len());
        let n = tcp.read(&mut chunk[..want]).await.unwrap_or(0);
        if n == 0 {
            return Err(PeekFailure {
                reason: "eof",
                answer_as_tls: false,
            });
        }
        match peek.handle_bytes(&chunk[..n]) {
            Ok(Some(hello)) => return Ok(hello.clone()),
            Ok(None) => {}
            Err(e) => return Err(peek_failure(&e)),
        }
    }
}

fn peek_failure(error: &PeekError) -> PeekFailure {
    let (reason, answer_as_tls) = match error {
        PeekError::NotTls => ("not_tls", true),
        PeekError::NotClientHello => ("not_client_hello", true),
        // rustls would wait for more of these; the mux does not.
        PeekError::TooLarge => ("too_large", false),
        PeekError::TooFragmented => ("too_fragmented", false),
        _ => ("malformed", true),
    };
    PeekFailure {
        reason,
        answer_as_tls,
    }
}

/// Connects to `upstream` with `TCP_NODELAY` and sends as much of `head` as
/// the new connection takes at once; returns the stream and how much of
/// `head` went.
///
/// A non-blocking connect returns before the handshake is known to be done,
/// but to a nearby upstream (the usual case: a service on the box itself)
/// it is often done already. Sending at once then saves the wait for the
/// socket to turn writable, a round through the runtime's event loop, on
/// the path of every passthrough handshake. When the connection is not
/// ready yet, the send fails with `EAGAIN` and nothing is lost.
async fn connect_with(upstream: &str, head: &[u8]) -> io::Result<(TcpStream, usize)> {
    let Ok(addr) = upstream.parse::<SocketAddr>() else {
        // A host name: resolved on tokio's blocking pool.
        let tcp = TcpStream::connect(upstream).await?;
        let _ = tcp.set_nodelay(true);
        return Ok((tcp, 0));
    };
    use socket2::{Domain, Protocol, Socket, Type};
    // Non-blocking from the start: no fcntl calls afterwards.
    let stream = Type::STREAM.nonblocking();
    let socket = Socket::new(Domain::for_address(addr), stream, Some(Protocol::TCP))?;
    let _ = socket.set_tcp_nodelay(true);
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => {}
        Err(e) => return Err(e),
    }
    let sent = match socket.send(head) {
        Ok(n) => n,
        Err(e) if not_connected_yet(&e) => 0,
        Err(e) => return Err(e),
    };
    let tcp = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    if sent == 0 {
        // Not connected yet: wait for the handshake to end either way.
        tcp.writable().await?;
        if let Some(e) = tcp.take_error()? {
            return Err(e);
        }
    }
    Ok((tcp, sent))
}

fn not_connected_yet(error: &io::Error) -> bool {
    use nix::errno::Errno;
    error.kind() == io::ErrorKind::WouldBlock
        || error.raw_os_error() == Some(Errno::ENOTCONN as i32)
}

/// Reads the first bytes of a terminated stream until [`sniff`] decides.
async fn read_prefix<S>(stream: &mut S, prefix: &mut Vec<u8>) -> io::Result<Sniffed>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut buf = [0u8; SNIFF_LEN];
    loop {
        let verdict = sniff(prefix);
        if verdict != Sniffed::NeedMore {
            return Ok(verdict);
        }
        let want = SNIFF_LEN - prefix.len();
        let n = stream.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        prefix.extend_from_slice(&buf[..n]);
    }
}

fn by_alpn(alpn: Option<&[u8]>) -> Option<ServiceName> {
    match alpn {
        Some(b"h2") | Some(b"http/1.1") => Some(ServiceName::Https),
        _ => None,
    }
}

fn tls_reason(error: &io::Error) -> &'static str {
    let is_tls = error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
    if is_tls {
        "tls"
    } else {
        "io"
    }
}

fn is_exhaustion(error: &io::Error) -> bool {
    use nix::errno::Errno;
    let exhausted = [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM];
    error
        .raw_os_error()
        .is_some_and(|code| exhausted.iter().any(|e| *e as i32 == code))
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `[::]` and `0.0.0.0` are configured as separate listeners.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Caps on connections in the peek phase, in total and per source.
#[derive(Debug)]
struct Limits {
    total: Arc<Semaphore>,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_source: usize,
}

/// A connection's place in the peek phase; released on drop.
struct Pending {
    _permit: OwnedSemaphorePermit,
    source: IpAddr,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Limits {
    fn new(total: usize, per_source: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            per_source: Arc::new(Mutex::new(HashMap::new())),
            max_per_source: per_source,
        }
    }

    fn admit(&self, ip: IpAddr, metrics: &Metrics) -> Result<Pending, &'static str> {
        let permit = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| "limit_total")?;
        let source = source_key(ip);
        let mut counts = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(source).or_insert(0);
        if *count >= self.max_per_source {
            return Err("limit_source");
        }
        *count += 1;
        metrics.pending.inc();
        Ok(Pending {
            _permit: permit,
            source,
            per_source: Arc::clone(&self.per_source),
            gauge: metrics.pending.clone(),
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.gauge.dec();
        let mut counts = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// One source for the per-source limit: an IPv4 address, or an IPv6 /64
/// (a single host usually has a whole /64 to pick addresses from).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
        v4 => v4,
    }
}

/// Keeps a route's active-connection gauge up while the connection lives.
struct GaugeGuard<'a> {
    gauge: &'a prometheus_client::metrics::gauge::Gauge,
}

impl<'a> GaugeGuard<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self { gauge }
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_limit_and_release() {
        let metrics = Metrics::new();
        let limits = Limits::new(10, 2);
        let a: IpAddr = "127.0.0.2".parse().expect("ip");
        let b: IpAddr = "127.0.0.3".parse().expect("ip");
        let first = limits.admit(a, &metrics).expect("first");
        let _second = limits.admit(a, &metrics).expect("second");
        assert_eq!(limits.admit(a, &metrics).err(), Some("limit_source"));
        assert!(limits.admit(b, &metrics).is_ok());
        drop(first);
        assert!(limits.admit(a, &metrics).is_ok());
    }

    #[test]
    fn total_limit() {
        let metrics = Metrics::new();
        let limits = Limits::new(1, 5);
        let _held = limits
            .admit("127.0.0.2".parse().expect("ip"), &metrics)
            .expect("first");
        let other = limits.admit("127.0.0.3".parse().expect("ip"), &metrics);
        assert_eq!(other.err(), Some("limit_total"));
    }

    #[test]
    fn ipv6_sources_group_by_64() {
        let a = source_key("2001:db8:1:2:aaaa::1".parse().expect("ip"));
        let b = source_key("2001:db8:1:2:bbbb::2".parse().expect("ip"));
        let c = source_key("2001:db8:1:3::1".parse().expect("ip"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            source_key("::ffff:127.0.0.2".parse().expect("ip")),
            "127.0.0.2".parse::<IpAddr>().expect("ip")
        );
    }
}
