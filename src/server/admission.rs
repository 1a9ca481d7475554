//! Admission: how many connections the relay holds, in total and per
//! client address, counted from `accept` (not from the upgrade), so a
//! client cannot hold descriptors by never finishing its handshake.
//!
//! Addresses are canonicalised before counting: an IPv4-mapped IPv6
//! address (`::ffff:a.b.c.d`, what a dual-stack listener reports for IPv4
//! clients) counts as the IPv4 address, and IPv6 clients are grouped by
//! their `/ipv6_prefix_len` network (default /64: one subscriber usually
//! gets a whole /64, so counting single addresses would let one client
//! take as many slots as it likes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A client address as counted: IPv4 addresses in their mapped form,
/// IPv6 addresses cut to the configured prefix.
/// Stored as bytes: a `u128` would be 16-byte aligned and pad every
/// connection entry that holds one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpKey([u8; 16]);

impl IpKey {
    /// A connection counted in the total only, its client not known yet
    /// (a trusted proxy's connection before its PROXY header or first
    /// request). Never the key of a real peer: `ff..` is multicast, which
    /// cannot be a TCP peer, whatever the prefix length.
    pub const PENDING: IpKey = IpKey([0xff; 16]);

    /// The counting key of `ip` with IPv6 addresses grouped by `prefix` bits.
    pub fn new(ip: IpAddr, prefix: u8) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey(v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return IpKey(v4.to_ipv6_mapped().octets());
                }
                let bits = u32::from(prefix.clamp(1, 128));
                let mask = u128::MAX << (128 - bits);
                IpKey((u128::from(v6) & mask).to_be_bytes())
            }
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached (answered 503).
    Full,
    /// `max_connections_per_ip` reached (answered 429).
    PerIp,
}

pub struct Admission {
    max_connections: usize,
    /// 0: unlimited.
    max_per_ip: usize,
    ipv6_prefix: u8,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpKey, u32>>,
}

impl Admission {
    pub fn new(max_connections: usize, max_per_ip: usize, ipv6_prefix: u8) -> Admission {
        Admission {
            max_connections,
            max_per_ip,
            ipv6_prefix,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    fn per_ip(&self) -> MutexGuard<'_, HashMap<IpKey, u32>> {
        // A panic elsewhere must not take admission down with it.
        self.per_ip.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection from `ip`, or refuses it.
    pub fn admit(&self, ip: IpAddr) -> Result<IpKey, Refusal> {
        let key = IpKey::new(ip, self.ipv6_prefix);
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        if self.max_per_ip > 0 {
            let mut per_ip = self.per_ip();
            let n = per_ip.entry(key).or_insert(0);
            if *n as usize >= self.max_per_ip {
                if *n == 0 {
                    per_ip.remove(&key);
                }
                drop(per_ip);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerIp);
            }
            *n += 1;
        }
        Ok(key)
    }

    /// Counts a new connection whose client is not known yet (it comes
    /// from a trusted proxy): in the total only, until [`Admission::rekey`].
    pub fn admit_pending(&self) -> Result<IpKey, Refusal> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        Ok(IpKey::PENDING)
    }

    /// Moves a counted connection from `from` to the client `ip` (learnt
    /// from a trusted proxy), or refuses it if `ip` is at its limit; the
    /// connection then keeps `from` until it is released.
    pub fn rekey(&self, from: IpKey, ip: IpAddr) -> Result<IpKey, Refusal> {
        let to = IpKey::new(ip, self.ipv6_prefix);
        if to == from || self.max_per_ip == 0 {
            return Ok(to);
        }
        let mut per_ip = self.per_ip();
        let n = per_ip.entry(to).or_insert(0);
        if *n as usize >= self.max_per_ip {
            if *n == 0 {
                per_ip.remove(&to);
            }
            return Err(Refusal::PerIp);
        }
        *n += 1;
        Self::uncount(&mut per_ip, from);
        Ok(to)
    }

    fn uncount(per_ip: &mut HashMap<IpKey, u32>, key: IpKey) {
        if key == IpKey::PENDING {
            return;
        }
        if let Some(n) = per_ip.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&key);
            }
        }
    }

    /// A counted connection ended.
    pub fn release(&self, key: IpKey) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        if self.max_per_ip > 0 && key != IpKey::PENDING {
            Self::uncount(&mut self.per_ip(), key);
        }
    }

    /// Connections counted now (all workers).
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        assert_eq!(
            IpKey::new(ip("::ffff:192.0.2.7"), 64),
            IpKey::new(ip("192.0.2.7"), 64)
        );
        let a = Admission::new(10, 1, 64);
        a.admit(ip("192.0.2.7")).unwrap();
        assert_eq!(a.admit(ip("::ffff:192.0.2.7")), Err(Refusal::PerIp));
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix() {
        let a = Admission::new(10, 2, 64);
        a.admit(ip("2001:db8:1:2::1")).unwrap();
        a.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(a.admit(ip("2001:db8:1:2::3")), Err(Refusal::PerIp));
        // Another /64 is another client.
        a.admit(ip("2001:db8:1:3::1")).unwrap();
        // With /128 every address is its own client.
        let exact = Admission::new(10, 1, 128);
        exact.admit(ip("2001:db8::1")).unwrap();
        exact.admit(ip("2001:db8::2")).unwrap();
        assert_eq!(exact.admit(ip("2001:db8::1")), Err(Refusal::PerIp));
    }

    #[test]
    fn global_limit_and_release() {
        let a = Admission::new(2, 0, 64);
        let k1 = a.admit(ip("10.0.0.1")).unwrap();
        a.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.3")), Err(Refusal::Full));
        assert_eq!(a.open(), 2);
        a.release(k1);
        assert_eq!(a.open(), 1);
        a.admit(ip("10.0.0.3")).unwrap();
    }

    #[test]
    fn pending_connections_count_in_the_total_only() {
        let a = Admission::new(3, 1, 64);
        let p1 = a.admit_pending().unwrap();
        let p2 = a.admit_pending().unwrap();
        assert_eq!((p1, a.open()), (IpKey::PENDING, 2));
        assert!(a.per_ip().is_empty());
        // Two clients behind the proxy: one slot each.
        let k1 = a.rekey(p1, ip("203.0.113.1")).unwrap();
        assert_eq!(a.rekey(p2, ip("203.0.113.1")), Err(Refusal::PerIp));
        let k2 = a.rekey(p2, ip("::ffff:203.0.113.2")).unwrap();
        assert_eq!(k2, IpKey::new(ip("203.0.113.2"), 64));
        // A direct client at its limit is refused at accept as before.
        assert_eq!(a.admit(ip("203.0.113.1")), Err(Refusal::PerIp));
        assert_eq!(a.admit_pending(), Ok(IpKey::PENDING));
        assert_eq!(a.admit_pending(), Err(Refusal::Full));
        a.release(k1);
        a.release(k2);
        a.release(IpKey::PENDING);
        assert_eq!(a.open(), 0);
        assert!(a.per_ip().is_empty());
    }

    #[test]
    fn rekey_moves_the_slot() {
        let a = Admission::new(10, 1, 64);
        let k = a.admit_pending().unwrap();
        let k = a.rekey(k, ip("192.0.2.1")).unwrap();
        // Same client again (a keep-alive connection's next request): no-op.
        assert_eq!(a.rekey(k, ip("192.0.2.1")), Ok(k));
        // Another client on the same proxy connection: the slot moves.
        let k2 = a.rekey(k, ip("192.0.2.2")).unwrap();
        a.admit_pending()
            .and_then(|p| a.rekey(p, ip("192.0.2.1")))
            .unwrap();
        assert_eq!(a.per_ip().len(), 2);
        a.release(k2);
        assert_eq!(a.per_ip().len(), 1);
        // Unlimited per IP: keys only.
        let u = Admission::new(10, 0, 64);
        let p = u.admit_pending().unwrap();
        assert_eq!(
            u.rekey(p, ip("192.0.2.1")),
            Ok(IpKey::new(ip("192.0.2.1"), 64))
        );
    }

    #[test]
    fn per_ip_slots_come_back() {
        let a = Admission::new(100, 1, 64);
        let k = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")), Err(Refusal::PerIp));
        assert_eq!(a.open(), 1, "a refusal does not count");
        a.release(k);
        a.admit(ip("10.0.0.1")).unwrap();
        assert!(a.per_ip().len() == 1);
    }
}
