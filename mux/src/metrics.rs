//! Prometheus metrics of the mux, registered under the `mux_` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A `reason` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Short, fixed vocabulary: see the metric's help text.
    pub reason: &'static str,
}

/// A `route` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The route's configured name.
    pub route: String,
}

/// A `service` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    /// `https`, `turn`, `acme` or `none`.
    pub service: &'static str,
}

/// Every metric the mux updates.
#[derive(Debug)]
pub struct Metrics {
    /// Connections accepted on the listeners.
    pub accepted: Counter,
    /// Accept errors from resource exhaustion, each followed by a back-off.
    pub accept_errors: Counter,
    /// Connections closed before or during the peek, by reason.
    pub peek_failures: Family<Reason, Counter>,
    /// Connections now in the peek phase.
    pub pending: Gauge,
    /// Completed TLS handshakes of terminated connections.
    pub handshakes: Counter,
    /// Failed TLS handshakes of terminated connections, by reason.
    pub handshake_failures: Family<Reason, Counter>,
    /// Connections routed, by route.
    pub route_hits: Family<RouteLabel, Counter>,
    /// Connections open after routing, by route.
    pub active: Family<RouteLabel, Gauge>,
    /// Passthrough upstreams that could not be reached.
    pub upstream_failures: Family<RouteLabel, Counter>,
    /// Terminated connections handed to a service, by service.
    pub dispatched: Family<ServiceLabel, Counter>,
    /// Size of ClientHello messages in bytes.
    pub hello_bytes: Histogram,
    /// Number of TLS records a ClientHello arrived in.
    pub hello_records: Histogram,
    /// Certificate reloads, by result (`ok`, `error`, `acme_ok`, `acme_error`).
    pub cert_reloads: Family<Reason, Counter>,
}

/// One route's series, created with the route so that each is exported
/// (at zero) from the start and a connection updates it without a lookup.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    /// This route's `route_hits`.
    pub hits: Counter,
    /// This route's `active_connections`.
    pub active: Gauge,
    /// This route's `upstream_failures`.
    pub upstream_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics at zero.
    pub fn new() -> Self {
        Self {
            accepted: Counter::default(),
            accept_errors: Counter::default(),
            peek_failures: Family::default(),
            pending: Gauge::default(),
            handshakes: Counter::default(),
            handshake_failures: Family::default(),
            route_hits: Family::default(),
            active: Family::default(),
            upstream_failures: Family::default(),
            dispatched: Family::default(),
            hello_bytes: Histogram::new([
                256.0, 512.0, 1024.0, 1536.0, 2048.0, 4096.0, 8192.0, 16384.0,
            ]),
            hello_records: Histogram::new([1.0, 2.0, 4.0, 8.0, 32.0, 128.0]),
            cert_reloads: Family::default(),
        }
    }

    /// The series of the route called `name`.
    pub fn route(&self, name: &str) -> RouteMetrics {
        let label = RouteLabel {
            route: name.to_owned(),
        };
        RouteMetrics {
            hits: self.route_hits.get_or_create(&label).clone(),
            active: self.active.get_or_create(&label).clone(),
            upstream_failures: self.upstream_failures.get_or_create(&label).clone(),
        }
    }

    /// Registers every metric in `registry` under the `mux_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("mux");
        r.register(
            "connections_accepted",
            "Connections accepted",
            self.accepted.clone(),
        );
        r.register(
            "accept_errors",
            "Accept errors from resource exhaustion (each followed by a back-off)",
            self.accept_errors.clone(),
        );
        r.register(
            "peek_failures",
            "Connections closed before routing, by reason: timeout, eof, not_tls, \
             not_client_hello, too_large, too_fragmented, malformed, limit_total, limit_source",
            self.peek_failures.clone(),
        );
        r.register(
            "pending_connections",
            "Connections in the peek phase",
            self.pending.clone(),
        );
        r.register(
            "handshakes",
            "Completed TLS handshakes",
            self.handshakes.clone(),
        );
        r.register(
            "handshake_failures",
            "Failed TLS handshakes, by reason: timeout, tls, io",
            self.handshake_failures.clone(),
        );
        r.register(
            "route_hits",
            "Connections routed, by route",
            self.route_hits.clone(),
        );
        r.register(
            "active_connections",
            "Open connections, by route",
            self.active.clone(),
        );
        r.register(
            "upstream_failures",
            "Passthrough upstreams that could not be reached, by route",
            self.upstream_failures.clone(),
        );
        r.register(
            "dispatched",
            "Terminated connections handed to a service",
            self.dispatched.clone(),
        );
        r.register(
            "client_hello_bytes",
            "Size of ClientHello handshake messages",
            self.hello_bytes.clone(),
        );
        r.register(
            "client_hello_records",
            "TLS records a ClientHello arrived in",
            self.hello_records.clone(),
        );
        r.register(
            "certificate_reloads",
            "Certificate reloads, by result: ok, error (files), acme_ok, acme_error (ACME)",
            self.cert_reloads.clone(),
        );
    }
}
