//! Which addresses a producer may reach (SSRF protection), in one place.
//!
//! Unless `producer.allow_private_targets`, a delivery reaches only public unicast
//! addresses:
//! - a URL naming a blocked IP literal (in any form the URL standard parses: decimal,
//!   octal, hex, short, IPv4-mapped or -compatible IPv6) is refused when the integration
//!   is created;
//! - a host name is resolved by [`CheckedResolver`], which drops every blocked address,
//!   and the delivery client connects only to the addresses it returned, so a name
//!   re-pointed between the check and the connection (DNS rebinding) cannot reach a
//!   blocked one. A name with nothing left fails the delivery with [`BlockedTarget`],
//!   before any connection is tried: the reason says nothing about the port's state.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// Whether an address is outside what a producer may reach by default: loopback,
/// private, shared (CGNAT), link-local, unspecified, broadcast, multicast, reserved,
/// documentation and benchmarking ranges, and IPv6 forms that embed or translate to
/// IPv4 (mapped, compatible, NAT64, 6to4, Teredo).
pub fn is_blocked(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_blocked_v4(v4),
        IpAddr::V6(v6) => is_blocked_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn is_blocked_v4(ip: Ipv4Addr) -> bool {
    const BLOCKED: [([u8; 4], u32); 16] = [
        ([0, 0, 0, 0], 8),       // "this network", 0.0.0.0
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // shared address space (CGNAT)
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local, cloud metadata
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // documentation
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // documentation
        ([203, 0, 113, 0], 24),  // documentation
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, and 255.255.255.255
        ([255, 255, 255, 255], 32),
    ];
    BLOCKED.iter().any(|(net, prefix)| in_v4(ip, *net, *prefix))
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
    (u128::from(ip) & mask) == (u128::from(Ipv6Addr::from(net)) & mask)
}

fn is_blocked_v6(ip: Ipv6Addr) -> bool {
    const BLOCKED: [([u16; 8], u32); 11] = [
        ([0, 0, 0, 0, 0, 0, 0, 0], 96),          // ::, ::1 and IPv4-compatible ::a.b.c.d
        ([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),     // IPv4-mapped ::ffff:a.b.c.d
        ([0, 0, 0, 0, 0xffff, 0, 0, 0], 96),     // IPv4-translated ::ffff:0:a.b.c.d
        ([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),  // NAT64
        ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),  // local-use NAT64
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard-only
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),     // IETF protocol assignments, Teredo
        ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
        ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),     // 6to4
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique local
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 9),      // link-local fe80::/10 and site-local fec0::/10
    ];
    ip.is_multicast() || BLOCKED.iter().any(|(net, prefix)| in_v6(ip, *net, *prefix))
}

/// A host name whose every address is blocked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{host} resolves only to addresses outside what producers may reach (loopback, private, \
     link-local or reserved); producer.allow_private_targets is off"
)]
pub struct BlockedTarget {
    /// The name.
    pub host: String,
}

/// Resolves producer host names with the system resolver and keeps only the addresses
/// a producer may reach (all of them with `allow_private`).
#[derive(Debug, Clone, Copy)]
pub struct CheckedResolver {
    /// Keep blocked addresses too (`producer.allow_private_targets`, as in `vrsky dev`).
    pub allow_private: bool,
}

/// What a resolution gives the connector.
pub type Addrs = std::vec::IntoIter<SocketAddr>;

type ResolveFuture = Pin<Box<dyn Future<Output = Result<Addrs, Box<dyn std::error::Error + Send + Sync>>> + Send>>;

impl CheckedResolver {
    /// Resolves `host` (port 0: the connector sets the URL's) and filters the addresses.
    pub async fn resolve(self, host: String) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
        Ok(self.keep(host, found)?)
    }

    /// The addresses of `host` a delivery may connect to, or why none.
    pub fn keep(self, host: String, found: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, BlockedTarget> {
        if self.allow_private {
            return Ok(found);
        }
        let kept: Vec<SocketAddr> = found.into_iter().filter(|a| !is_blocked(a.ip())).collect();
        if kept.is_empty() {
            return Err(BlockedTarget { host });
        }
        Ok(kept)
    }
}

impl tower_service::Service<Name> for CheckedResolver {
    type Response = Addrs;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let this = *self;
        let host = name.as_str().to_owned();
        Box::pin(async move { Ok(this.resolve(host).await?.into_iter()) })
    }
}

/// The [`BlockedTarget`] somewhere in an error's chain, if the delivery failed on one.
pub fn blocked_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BlockedTarget> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(b) = err.downcast_ref::<BlockedTarget>() {
            return Some(b);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocked_and_allowed_ranges() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::808:808",
            "2001::1",
            "2001:db8::1",
            "2002:7f00:1::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "100::1",
        ] {
            assert!(is_blocked(ip(s)), "{s} should be blocked");
        }
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "198.20.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
        ] {
            assert!(!is_blocked(ip(s)), "{s} should be allowed");
        }
    }

    #[test]
    fn resolved_addresses_are_filtered_and_none_left_is_an_error() {
        let strict = CheckedResolver { allow_private: false };
        let a = |s: &str| SocketAddr::new(ip(s), 0);
        // A name with a public and a loopback address keeps only the public one: the
        // connection can only go where the check allowed.
        assert_eq!(
            strict.keep("mixed".into(), vec![a("127.0.0.1"), a("8.8.8.8")]).unwrap(),
            vec![a("8.8.8.8")]
        );
        let e = strict.keep("evil".into(), vec![a("127.0.0.1"), a("::1")]).unwrap_err();
        assert_eq!(e.host, "evil");
        assert!(
            !e.to_string().contains("refused") && !e.to_string().contains("port"),
            "{e}"
        );
        let open = CheckedResolver { allow_private: true };
        assert_eq!(
            open.keep("dev".into(), vec![a("127.0.0.1")]).unwrap(),
            vec![a("127.0.0.1")]
        );
    }
}
