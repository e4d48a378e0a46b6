//! The mux's part of the box configuration: `[mux]`, `[[mux.route]]` and `[tls]`.
//!
//! Deserialised from TOML by the binary. Unknown keys are errors, and
//! [`MuxConfig::validate`] names the key of every inconsistency it finds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// `[mux]`: the listener, its limits and its routes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MuxConfig {
    /// Addresses to listen on. Default: `0.0.0.0:443`.
    #[serde(default = "default_listen", deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    /// One deadline for reading the whole ClientHello. Default: 10 s.
    #[serde(default = "default_peek_timeout", with = "humantime_serde")]
    pub peek_timeout: Duration,
    /// Deadline for the TLS handshake of a terminated connection. Default: 10 s.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A connection with no bytes in either direction for this long is closed. Default: 5 min.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Deadline for connecting to a passthrough upstream. Default: 5 s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Connections still in the peek phase, all sources together. Default: 1024.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Connections still in the peek phase from one IPv4 address or IPv6 /64. Default: 32.
    #[serde(default = "default_max_pending_per_source")]
    pub max_pending_per_source: usize,
    /// Routes, tried in order; the first match wins.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
}

/// `[[mux.route]]`: which connections go where.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label used in logs and metrics. Default: `route<index>`.
    pub name: Option<String>,
    /// Server names this route matches: exact (`turn.example.org`) or one-label
    /// wildcard (`*.example.org`). Empty: any name, and no name.
    #[serde(default)]
    pub sni: Vec<String>,
    /// ALPN ids this route matches; a hello offering any of them matches. Empty: any.
    #[serde(default)]
    pub alpn: Vec<String>,
    /// What to do with a matching connection.
    pub action: ActionKind,
    /// For `terminate`: the service to hand the stream to. Default: by first bytes.
    pub service: Option<ServiceName>,
    /// For `passthrough`: `host:port` of the TCP upstream.
    pub upstream: Option<String>,
    /// For `passthrough`: send a PROXY protocol v2 header first. Default: false.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// `action` of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// TLS ends here; the stream goes to an in-process service.
    Terminate,
    /// The bytes go unchanged to a TCP upstream.
    Passthrough,
}

/// `service` of a terminating route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceName {
    /// The HTTPS service (status page, health, SFU signalling).
    Https,
    /// The TURN relay (TURNS).
    Turn,
}

/// `[tls]`: where the certificates of terminated connections come from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates from PEM files, reloaded when they change or on SIGHUP.
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<CertFileConfig>,
    /// Names of the self-signed certificate served while no other exists. Default: `localhost`.
    #[serde(default)]
    pub self_signed_names: Vec<String>,
    /// Certificates from an ACME CA, answered with TLS-ALPN-01 on the mux itself.
    pub acme: Option<AcmeConfig>,
}

/// `[[tls.certificate]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFileConfig {
    /// PEM file with the chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Names to serve it for. Default: the leaf's subjectAltName DNS names.
    pub names: Option<Vec<String>>,
}

/// `[tls.acme]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// Directory URL of the CA.
    pub directory: String,
    /// Names to request one certificate for.
    pub domains: Vec<String>,
    /// Account contact URLs (`mailto:ops@example.org`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// Where the account key and the certificates are kept.
    pub state_dir: PathBuf,
    /// Renew this long before expiry, or at two thirds of the lifetime if that
    /// comes first. Default: 30 days.
    #[serde(default = "default_renew_before", with = "humantime_serde")]
    pub renew_before: Duration,
    /// PEM root to trust, instead of the system roots, for the directory's
    /// HTTPS (the first certificate in the file; for test CAs).
    pub directory_ca: Option<PathBuf>,
}

impl Default for MuxConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            peek_timeout: default_peek_timeout(),
            handshake_timeout: default_handshake_timeout(),
            idle_timeout: default_idle_timeout(),
            connect_timeout: default_connect_timeout(),
            max_pending: default_max_pending(),
            max_pending_per_source: default_max_pending_per_source(),
            routes: Vec::new(),
        }
    }
}

impl MuxConfig {
    /// Checks what serde cannot: consistency between keys.
    pub fn validate(&self) -> Result<(), Error> {
        if self.listen.is_empty() {
            return Err(config_error("mux.listen", "needs at least one address"));
        }
        if self.max_pending == 0 || self.max_pending_per_source == 0 {
            return Err(config_error("mux.max_pending", "limits must be at least 1"));
        }
        for (i, route) in self.routes.iter().enumerate() {
            route.validate(&format!("mux.route[{i}]"))?;
        }
        Ok(())
    }
}

impl RouteConfig {
    fn validate(&self, key: &str) -> Result<(), Error> {
        for name in &self.sni {
            check_pattern(name).map_err(|why| config_error(&format!("{key}.sni"), &why))?;
        }
        if self.alpn.iter().any(|id| id.is_empty() || id.len() > 255) {
            return Err(config_error(
                &format!("{key}.alpn"),
                "ids are 1 to 255 bytes",
            ));
        }
        match self.action {
            ActionKind::Terminate => {
                if self.upstream.is_some() || self.proxy_protocol {
                    return Err(config_error(
                        &format!("{key}.upstream"),
                        "only passthrough routes have an upstream",
                    ));
                }
            }
            ActionKind::Passthrough => {
                let upstream = self.upstream.as_deref().ok_or_else(|| {
                    config_error(&format!("{key}.upstream"), "passthrough needs host:port")
                })?;
                check_upstream(upstream)
                    .map_err(|why| config_error(&format!("{key}.upstream"), &why))?;
                if self.service.is_some() {
                    return Err(config_error(
                        &format!("{key}.service"),
                        "only terminate routes have a service",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl TlsConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        for (i, cert) in self.certificates.iter().enumerate() {
            for name in cert.names.iter().flatten() {
                check_pattern(name)
                    .map_err(|why| config_error(&format!("tls.certificate[{i}].names"), &why))?;
            }
        }
        if let Some(acme) = &self.acme {
            if acme.domains.is_empty() {
                return Err(config_error("tls.acme.domains", "needs at least one name"));
            }
            for name in &acme.domains {
                check_pattern(name).map_err(|why| config_error("tls.acme.domains", &why))?;
                if name.starts_with("*.") {
                    return Err(config_error(
                        "tls.acme.domains",
                        "wildcards need DNS-01, which the box cannot answer",
                    ));
                }
            }
            if !acme.directory.starts_with("https://") {
                return Err(config_error(
                    "tls.acme.directory",
                    "must be an https:// URL",
                ));
            }
        }
        Ok(())
    }
}

fn config_error(key: &str, why: &str) -> Error {
    Error::Config(format!("{key}: {why}"))
}

/// A server name pattern: a DNS name, optionally with a `*.` first label.
fn check_pattern(pattern: &str) -> Result<(), String> {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(format!("`{pattern}` is not a DNS name or `*.` wildcard"));
    }
    Ok(())
}

fn check_upstream(upstream: &str) -> Result<(), String> {
    if upstream.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = upstream
        .rsplit_once(':')
        .ok_or_else(|| format!("`{upstream}` is not host:port"))?;
    port.parse::<u16>()
        .map_err(|_| format!("`{port}` is not a port number"))?;
    check_pattern(host).map_err(|_| format!("`{host}` is not a host name or address"))
}

fn one_or_many<'de, D>(deserializer: D) -> Result<Vec<SocketAddr>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(SocketAddr),
        Many(Vec<SocketAddr>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(addr) => vec![addr],
        OneOrMany::Many(addrs) => addrs,
    })
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 443))]
}
fn default_peek_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_pending() -> usize {
    1024
}
fn default_max_pending_per_source() -> usize {
    32
}
fn default_renew_before() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(check_pattern("turn.example.org").is_ok());
        assert!(check_pattern("*.example.org").is_ok());
        assert!(check_pattern("example.org.").is_ok());
        assert!(check_pattern("a.*.example.org").is_err());
        assert!(check_pattern("").is_err());
        assert!(check_pattern("-bad.example").is_err());
    }

    #[test]
    fn upstreams() {
        assert!(check_upstream("127.0.0.1:8443").is_ok());
        assert!(check_upstream("[::1]:8443").is_ok());
        assert!(check_upstream("backend.internal:8443").is_ok());
        assert!(check_upstream("backend.internal").is_err());
        assert!(check_upstream("backend:99999").is_err());
    }
}
