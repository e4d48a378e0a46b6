//! PROXY protocol v2 headers for passthrough upstreams.
//!
//! Encoding is the `ppp` crate's; this only decides which addresses go in.

use std::net::{SocketAddr, SocketAddrV6};

use ppp::v2::{Builder, Command, Protocol, Version};

/// A PROXY v2 `PROXY` header for a TCP connection from `peer` to `local`.
///
/// The protocol carries one address family per header, so when one side is
/// IPv4 and the other IPv6 (a dual-stack listener), the IPv4 side is written
/// in its IPv4-mapped IPv6 form.
pub fn v2_header(peer: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (peer, local) = match (peer, local) {
        (SocketAddr::V4(_), SocketAddr::V6(_)) | (SocketAddr::V6(_), SocketAddr::V4(_)) => {
            (mapped(peer), mapped(local))
        }
        _ => (peer, local),
    };
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (peer, local),
    )
    .build()
    .expect("a header with two addresses and no TLVs always fits")
}

fn mapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Addresses, Header};

    #[test]
    fn round_trips_through_the_parser() {
        let peer: SocketAddr = "127.0.0.2:40000".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:443".parse().expect("addr");
        let bytes = v2_header(peer, local);
        let header = Header::try_from(bytes.as_slice()).expect("valid header");
        match header.addresses {
            Addresses::IPv4(a) => {
                assert_eq!(
                    a.source_address,
                    *match peer {
                        SocketAddr::V4(ref v) => v.ip(),
                        SocketAddr::V6(_) => unreachable!("v4 literal"),
                    }
                );
                assert_eq!(a.source_port, 40000);
                assert_eq!(a.destination_port, 443);
            }
            other => panic!("unexpected addresses {other:?}"),
        }
    }

    #[test]
    fn mixed_families_become_v6() {
        let peer: SocketAddr = "127.0.0.2:40000".parse().expect("addr");
        let local: SocketAddr = "[::1]:443".parse().expect("addr");
        let bytes = v2_header(peer, local);
        let header = Header::try_from(bytes.as_slice()).expect("valid header");
        assert!(matches!(header.addresses, Addresses::IPv6(_)));
    }
}
