//! The routing table: from a peeked ClientHello to what happens to the connection.

use std::sync::Arc;

use crate::certs::normalize_name;
use crate::config::{ActionKind, MuxConfig, RouteConfig, ServiceName};
use crate::peek::ClientHello;

/// Routes in configuration order, and the default for a hello none matches.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
    default: Route,
}

/// One entry of the table.
#[derive(Debug, Clone)]
pub struct Route {
    /// Label for logs and metrics.
    pub name: Arc<str>,
    /// Place in [`RouteTable::iter`], for state kept per route elsewhere.
    pub index: usize,
    names: Vec<NamePattern>,
    alpn: Vec<Vec<u8>>,
    /// What happens to a matching connection.
    pub action: Action,
}

/// What happens to a routed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Terminate TLS and hand the stream to a service; `None` dispatches by
    /// the first bytes after the handshake.
    Terminate(Option<ServiceName>),
    /// Replay the bytes to a TCP upstream.
    Passthrough {
        /// `host:port` of the upstream.
        upstream: Arc<str>,
        /// Send a PROXY protocol v2 header first.
        proxy_protocol: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NamePattern {
    Exact(String),
    /// The parent of a one-label wildcard: `*.example.org` is `example.org`.
    Wildcard(String),
}

/// Label of the route taken when nothing else matches.
pub const DEFAULT_ROUTE: &str = "default";

impl RouteTable {
    /// Builds the table from a validated configuration.
    pub fn new(config: &MuxConfig) -> Self {
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| Route::from_config(i, route))
            .collect();
        let default = Route {
            name: Arc::from(DEFAULT_ROUTE),
            index: config.routes.len(),
            names: Vec::new(),
            alpn: Vec::new(),
            action: Action::Terminate(None),
        };
        Self { routes, default }
    }

    /// The first route matching `hello`, or the default route.
    pub fn lookup(&self, hello: &ClientHello) -> &Route {
        self.routes
            .iter()
            .find(|route| route.matches(hello))
            .unwrap_or(&self.default)
    }

    /// The route for connections whose hello could not be read as one: it
    /// terminates, so rustls answers them.
    pub fn default_route(&self) -> &Route {
        &self.default
    }

    /// Every route, the default last, each at its [`Route::index`].
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().chain(std::iter::once(&self.default))
    }
}

impl Route {
    fn from_config(index: usize, config: &RouteConfig) -> Self {
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| format!("route{index}"));
        let action = match config.action {
            ActionKind::Terminate => Action::Terminate(config.service),
            ActionKind::Passthrough => Action::Passthrough {
                upstream: Arc::from(config.upstream.as_deref().unwrap_or_default()),
                proxy_protocol: config.proxy_protocol,
            },
        };
        Self {
            name: Arc::from(name),
            index,
            names: config.sni.iter().map(|n| NamePattern::new(n)).collect(),
            alpn: config
                .alpn
                .iter()
                .map(|id| id.as_bytes().to_vec())
                .collect(),
            action,
        }
    }

    fn matches(&self, hello: &ClientHello) -> bool {
        let name_ok = self.names.is_empty()
            || hello
                .server_name
                .as_deref()
                .is_some_and(|name| self.names.iter().any(|p| p.matches(name)));
        let alpn_ok = self.alpn.is_empty()
            || hello.alpn.iter().any(|offered| {
                self.alpn
                    .iter()
                    .any(|id| id.as_slice() == offered.as_slice())
            });
        name_ok && alpn_ok
    }
}

impl NamePattern {
    fn new(pattern: &str) -> Self {
        let pattern = normalize_name(pattern);
        match pattern.strip_prefix("*.") {
            Some(parent) => Self::Wildcard(parent.to_owned()),
            None => Self::Exact(pattern),
        }
    }

    /// `name` is already lowercase without a trailing dot (the peek does that).
    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == name,
            Self::Wildcard(parent) => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(sni: Option<&str>, alpn: &[&str]) -> ClientHello {
        let mut hello = ClientHello {
            server_name: sni.map(|s| heapless::String::try_from(s).expect("short name")),
            ..ClientHello::default()
        };
        for id in alpn {
            let id = heapless::Vec::from_slice(id.as_bytes()).expect("short id");
            hello.alpn.push(id).expect("few ids");
        }
        hello
    }

    #[test]
    fn first_match_wins_and_default_terminates() {
        let mux: MuxConfig = serde_json::from_str(
            r#"{"route": [
                {"name": "turns", "sni": ["turn.example.org"], "action": "terminate", "service": "turn"},
                {"name": "wild", "sni": ["*.Example.org."], "action": "passthrough", "upstream": "127.0.0.1:9"},
                {"name": "h2", "alpn": ["h2"], "action": "terminate", "service": "https"}
            ]}"#,
        )
        .expect("json config");
        mux.validate().expect("valid");
        let table = RouteTable::new(&mux);

        let name = |h: &ClientHello| table.lookup(h).name.to_string();
        assert_eq!(name(&hello(Some("turn.example.org"), &[])), "turns");
        assert_eq!(name(&hello(Some("a.example.org"), &["h2"])), "wild");
        assert_eq!(name(&hello(Some("a.b.example.org"), &["h2"])), "h2");
        assert_eq!(name(&hello(Some("example.org"), &[])), DEFAULT_ROUTE);
        assert_eq!(name(&hello(None, &["http/1.1"])), DEFAULT_ROUTE);
        assert_eq!(
            table.lookup(&hello(None, &[])).action,
            Action::Terminate(None)
        );
    }
}
