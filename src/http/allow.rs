//! Address allow lists (nginx's `allow …; deny all;`): which client addresses a listener
//! serves. MCP cannot authenticate to excp, so the address is the only thing to go by.

use std::net::IpAddr;

/// One `allow` entry: an address or a network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// "10.0.0.0/8", "192.0.2.7", "fd00::/8", "::1".
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr =
            addr.trim().parse().map_err(|_| format!("{text:?} is not an address or a CIDR network"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {max}")),
            },
        };
        let cidr = Cidr { network, prefix };
        if cidr.mask(network) != network {
            return Err(format!("{text:?} has host bits set: the network is {}/{prefix}", cidr.mask(network)));
        }
        Ok(cidr)
    }

    fn mask(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4) & (u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0));
                IpAddr::V4(bits.into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & (u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0));
                IpAddr::V6(bits.into())
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.network.is_ipv4() && self.mask(ip) == self.network
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Empty: everyone is served. Otherwise only addresses inside one of the entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<Cidr>);

impl AllowList {
    pub fn new(entries: Vec<Cidr>) -> AllowList {
        AllowList(entries)
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|c| c.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_and_single_addresses() {
        let list = AllowList::new(vec![Cidr::parse("10.0.0.0/8").unwrap(), Cidr::parse("::1").unwrap()]);
        assert!(list.allows(ip("10.200.3.4")));
        assert!(list.allows(ip("::ffff:10.1.2.3")), "IPv4-mapped on a dual-stack socket");
        assert!(list.allows(ip("::1")));
        assert!(!list.allows(ip("11.0.0.1")));
        assert!(!list.allows(ip("127.0.0.1")));
        assert!(!list.allows(ip("::2")));
        assert!(AllowList::default().allows(ip("203.0.113.9")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("203.0.113.9")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("2001:db8::1")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
    }

    #[test]
    fn bad_entries_say_why() {
        for (text, needle) in [
            ("10.0.0.1/8", "host bits"),
            ("10.0.0.0/33", "0 to 32"),
            ("fd00::/129", "0 to 128"),
            ("example.com", "not an address"),
            ("10.0.0.0/x", "prefix"),
        ] {
            let err = Cidr::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
