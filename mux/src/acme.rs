//! ACME (RFC 8555) certificates, validated with TLS-ALPN-01 on the mux itself.
