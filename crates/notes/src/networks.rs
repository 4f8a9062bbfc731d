//! Known scanner networks: the prefixes that mail-security gateways and mail providers
//! publish for their systems (`data/scanner-networks.txt`, with its sources and date),
//! plus any an operator adds. A click from one of them is a machine following the links of
//! the mail it carries, whatever its `User-Agent` says.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

/// The shipped table.
pub const PUBLISHED: &str = include_str!("../data/scanner-networks.txt");

/// Prefixes and who owns them, looked up by longest prefix.
#[derive(Clone, Default)]
pub struct ScannerNetworks {
    v4: PrefixMap<Ipv4Net, String>,
    v6: PrefixMap<Ipv6Net, String>,
}

impl std::fmt::Debug for ScannerNetworks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScannerNetworks({} IPv4, {} IPv6 prefixes)", self.v4.len(), self.v6.len())
    }
}

impl ScannerNetworks {
    /// The shipped table and `extra` (an operator's own, owned by "operator").
    pub fn published_and(extra: &[IpNet]) -> Self {
        let mut networks = Self::default();
        // The shipped file is checked by a test; a line that does not parse cannot ship.
        for (net, owner) in parse(PUBLISHED).unwrap_or_default() {
            networks.insert(net, owner);
        }
        for net in extra {
            networks.insert(*net, "operator".into());
        }
        networks
    }

    fn insert(&mut self, net: IpNet, owner: String) {
        match net.trunc() {
            IpNet::V4(net) => {
                self.v4.insert(net, owner);
            }
            IpNet::V6(net) => {
                self.v6.insert(net, owner);
            }
        }
    }

    /// Who owns the network `ip` is in, if it is a known scanner network. An IPv4 address
    /// mapped into IPv6 (`::ffff:a.b.c.d`) is looked up as IPv4.
    pub fn owner(&self, ip: IpAddr) -> Option<&str> {
        match ip {
            IpAddr::V4(v4) => self.v4.get_lpm(&Ipv4Net::from(v4)).map(|(_, owner)| owner.as_str()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.owner(IpAddr::V4(v4)),
                None => self.v6.get_lpm(&Ipv6Net::from(v6)).map(|(_, owner)| owner.as_str()),
            },
        }
    }

    /// How many prefixes it holds.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads `<prefix> <owner>` lines; `#` starts a comment. Every bad line is reported.
pub fn parse(text: &str) -> Result<Vec<(IpNet, String)>, crate::Error> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(prefix), Some(owner), None) = (fields.next(), fields.next(), fields.next()) else {
            problems.push(format!("line {}: expected `<prefix> <owner>`", n + 1));
            continue;
        };
        match IpNet::from_str(prefix) {
            Ok(net) if net.trunc() == net => out.push((net, owner.to_owned())),
            Ok(net) => problems.push(format!("line {}: {prefix} has host bits set (is it {}?)", n + 1, net.trunc())),
            Err(e) => problems.push(format!("line {}: {prefix}: {e}", n + 1)),
        }
    }
    match problems.is_empty() {
        true => Ok(out),
        false => Err(crate::Error::ScannerNetworks(problems)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_parses_and_covers_every_named_provider() {
        let entries = parse(PUBLISHED).expect("every line of data/scanner-networks.txt parses");
        let owners: std::collections::HashSet<&str> = entries.iter().map(|(_, o)| o.as_str()).collect();
        for provider in ["microsoft-eop", "mimecast", "proofpoint", "barracuda", "google"] {
            assert!(owners.contains(provider), "{provider} is in the table");
        }
        assert_eq!(ScannerNetworks::published_and(&[]).len(), entries.len());
    }

    #[test]
    fn lookups_match_by_prefix_in_both_families() {
        let extra: IpNet = "203.0.113.0/24".parse().unwrap();
        let networks = ScannerNetworks::published_and(&[extra]);
        let owner = |ip: &str| networks.owner(ip.parse().unwrap());
        assert_eq!(owner("40.92.17.3"), Some("microsoft-eop"));
        assert_eq!(owner("40.93.255.255"), Some("microsoft-eop"), "the last address of a /15");
        assert_eq!(owner("40.94.0.1"), None, "just past it");
        assert_eq!(owner("205.139.110.77"), Some("mimecast"));
        assert_eq!(owner("2a01:111:f400:7c00::12"), Some("microsoft-eop"));
        assert_eq!(owner("2a01:111:f401::1"), None);
        assert_eq!(owner("::ffff:205.139.110.77"), Some("mimecast"), "IPv4 mapped into IPv6");
        assert_eq!(owner("203.0.113.9"), Some("operator"));
        for person in ["192.0.2.10", "198.51.100.7", "2001:db8::1", "95.108.0.1"] {
            assert_eq!(owner(person), None, "{person}");
        }
    }

    #[test]
    fn bad_lines_are_all_reported() {
        let error = parse("10.0.0.0/8 a\n300.1.1.1/8 b\n10.0.0.1/8 c\njust-one-field\n").unwrap_err();
        let crate::Error::ScannerNetworks(lines) = &error else { panic!("{error}") };
        assert_eq!(lines.len(), 3, "{error}");
        let problems = error.to_string();
        assert!(
            problems.contains("line 2") && problems.contains("line 3") && problems.contains("line 4"),
            "{problems}"
        );
    }
}
