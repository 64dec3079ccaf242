//! Consistent hashing (a DestinationRule's `consistentHash`): Envoy's ring hash. Each
//! endpoint owns `minimumRingSize` points on a 64-bit ring (so the ring has at least that
//! many), placed by hashing `<address>_<i>`; a request's key (a header, a cookie, a query
//! parameter or the caller's IP) is hashed and goes to the owner of the first point at or
//! after it. Envoy shares one ring size among the endpoints, so each one's points change when
//! another joins; here they do not, so an endpoint joining or leaving moves only the keys of
//! its own points, about 1/n of them, and only to or from itself. A ring holds at most
//! [`MAX_POINTS`] points: past that, each endpoint gets an equal share of them.
//!
//! An ejected endpoint (or, on a retry, the one that just failed) is passed over by walking on
//! to the next point of another endpoint: exactly where its keys would go on a ring built
//! without it, as Envoy rebuilds its ring from the healthy hosts. The hash is fixed (no
//! per-process seed), so every caller's sidecar sends one key to the same endpoint.

use crate::snapshot::ConsistentHash;
use http::HeaderMap;
use http::HeaderValue;
use std::io::Write as _;

/// 64-bit FNV-1a, finished with MurmurHash3's mixer so that near-identical inputs
/// (`addr_1`, `addr_2`) land far apart.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The most points one ring holds.
pub const MAX_POINTS: usize = 1 << 20;

/// The ring of one destination's endpoints.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// Points in hash order, each with its endpoint's index in the destination's list.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// A ring over `addresses` (the destination's endpoints, in its order) with at least
    /// `minimum` points.
    pub fn new<'a>(addresses: impl ExactSizeIterator<Item = &'a str>, minimum: u32) -> Ring {
        let n = addresses.len();
        if n == 0 {
            return Ring::default();
        }
        let per = (minimum as usize).clamp(1, (MAX_POINTS / n).max(1));
        let mut points = Vec::with_capacity(per * n);
        let mut name = Vec::new();
        for (index, address) in addresses.enumerate() {
            for i in 0..per {
                name.clear();
                name.extend_from_slice(address.as_bytes());
                name.push(b'_');
                // Into the reused buffer: no string per point.
                let _ = write!(name, "{i}");
                points.push((hash64(&name), index as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The endpoint (its index) owning `hash`, passing over those `usable` refuses; none when
    /// it refuses every one.
    pub fn pick(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(p, _)| *p < hash);
        let len = self.points.len();
        // Each endpoint's verdict is asked once per walk at most as often as it has points;
        // a walk over the whole ring means none is usable.
        (0..len)
            .map(|k| self.points[(start + k) % len].1 as usize)
            .find(|i| usable(*i))
    }
}

/// What a request's key is, compiled from the snapshot.
#[derive(Debug)]
pub struct HashPolicy {
    spec: ConsistentHash,
    header: Option<http::HeaderName>,
}

/// A request's place on the ring, and the cookie to set on its answer when one was made up.
pub struct Keyed {
    /// The key's hash.
    pub hash: u64,
    /// A `Set-Cookie` for the answer, when the cookie was absent and a TTL asks for one.
    pub set_cookie: Option<HeaderValue>,
}

impl HashPolicy {
    /// The policy of a snapshot's `consistentHash`.
    pub fn new(spec: &ConsistentHash) -> HashPolicy {
        HashPolicy {
            header: spec
                .header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            spec: spec.clone(),
        }
    }

    /// The minimum ring size its rings are built with.
    pub fn minimum_ring_size(&self) -> u32 {
        self.spec.minimum_ring_size
    }

    /// The request's key hashed, or none when it has no key (Envoy then picks at random).
    /// `fresh` makes up a cookie value when one must be set.
    pub fn key(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        source: std::net::IpAddr,
        fresh: impl FnOnce() -> u64,
    ) -> Option<Keyed> {
        let keyed = |bytes: &[u8]| {
            Some(Keyed {
                hash: hash64(bytes),
                set_cookie: None,
            })
        };
        if let Some(name) = &self.header {
            let mut values = headers.get_all(name).iter().map(|v| v.as_bytes());
            let first = values.next()?;
            let rest: Vec<&[u8]> = values.collect();
            if rest.is_empty() {
                return keyed(first);
            }
            // Several values hash as one, joined as Envoy joins them (rare: allocates).
            let mut all = vec![first];
            all.extend(rest);
            return keyed(&all.join(&b","[..]));
        }
        if let Some(param) = &self.spec.query_parameter {
            let value = query?.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == param).then_some(v)
            })?;
            return keyed(value.as_bytes());
        }
        if self.spec.source_ip {
            // Its text form, written on the stack (an IPv6 address is at most 45 bytes).
            let mut text = [0u8; 46];
            let mut cursor = std::io::Cursor::new(&mut text[..]);
            let _ = write!(cursor, "{source}");
            let len = cursor.position() as usize;
            return keyed(&text[..len]);
        }
        let cookie = self.spec.cookie.as_ref()?;
        if let Some(value) = cookie_value(headers, &cookie.name) {
            return keyed(value);
        }
        let ttl = cookie.ttl_s?;
        let value = format!("{:016x}", fresh());
        let mut set = format!("{}=\"{value}\"", cookie.name);
        if let Some(path) = &cookie.path {
            set.push_str("; Path=");
            set.push_str(path);
        }
        if ttl > 0 {
            set.push_str(&format!("; Max-Age={ttl}"));
        }
        set.push_str("; HttpOnly");
        Some(Keyed {
            hash: hash64(value.as_bytes()),
            set_cookie: HeaderValue::from_str(&set).ok(),
        })
    }
}

/// The value of the cookie `name` in the request's `Cookie` headers (quotes taken off).
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            let (k, v) = (&pair[..eq], &pair[eq + 1..]);
            if k != name.as_bytes() {
                return None;
            }
            Some(
                v.strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("198.18.0.{}:15006", i + 1))
            .collect()
    }

    fn owners(ring: &Ring, keys: usize) -> Vec<usize> {
        (0..keys)
            .map(|k| {
                ring.pick(hash64(format!("user-{k}").as_bytes()), |_| true)
                    .expect("an owner")
            })
            .collect()
    }

    #[test]
    fn a_joining_endpoint_takes_about_a_share_and_only_moves_keys_to_itself() {
        let three = addresses(3);
        let four = addresses(4);
        let before = owners(&Ring::new(three.iter().map(String::as_str), 1024), 10_000);
        let after = owners(&Ring::new(four.iter().map(String::as_str), 1024), 10_000);
        let moved: Vec<(usize, usize)> = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| (*a, *b))
            .collect();
        assert!(
            moved.iter().all(|(_, to)| *to == 3),
            "keys moved between old endpoints"
        );
        let share = moved.len() as f64 / 10_000.0;
        assert!((0.20..0.30).contains(&share), "{share}");
        // Every endpoint holds a fair share.
        for e in 0..4 {
            let held = after.iter().filter(|o| **o == e).count() as f64 / 10_000.0;
            assert!((0.20..0.30).contains(&held), "endpoint {e}: {held}");
        }
    }

    #[test]
    fn passing_over_an_endpoint_is_the_ring_without_it() {
        let four = addresses(4);
        let without: Vec<String> = four
            .iter()
            .filter(|a| !a.contains(".3:"))
            .cloned()
            .collect();
        let ring = Ring::new(four.iter().map(String::as_str), 1024);
        let smaller = Ring::new(without.iter().map(String::as_str), 1024);
        // Endpoint 2 of four is 198.18.0.3; on the smaller ring, indices past it shift down.
        for k in 0..5_000 {
            let h = hash64(format!("user-{k}").as_bytes());
            let skipped = ring.pick(h, |i| i != 2).expect("owner");
            let rebuilt = smaller.pick(h, |_| true).expect("owner");
            let rebuilt = if rebuilt >= 2 { rebuilt + 1 } else { rebuilt };
            assert_eq!(skipped, rebuilt, "key {k}");
        }
        assert_eq!(ring.pick(7, |_| false), None);
        assert_eq!(Ring::new(std::iter::empty(), 1024).pick(7, |_| true), None);
    }

    #[test]
    fn keys_come_from_the_header_the_query_the_source_or_the_cookie() {
        let source: std::net::IpAddr = [198, 18, 0, 9].into();
        let spec = |f: &dyn Fn(&mut ConsistentHash)| {
            let mut s = ConsistentHash {
                minimum_ring_size: 1024,
                ..Default::default()
            };
            f(&mut s);
            HashPolicy::new(&s)
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("alice"));
        headers.insert(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; session=\"abc\"; b=2"),
        );
        let by_header = spec(&|s| s.header = Some("x-user".into()));
        let k = by_header.key(&headers, None, source, || 0).expect("keyed");
        assert_eq!(k.hash, hash64(b"alice"));
        assert!(
            by_header
                .key(&HeaderMap::new(), None, source, || 0)
                .is_none()
        );

        let by_query = spec(&|s| s.query_parameter = Some("user".into()));
        let k = by_query
            .key(&headers, Some("a=1&user=bob"), source, || 0)
            .expect("keyed");
        assert_eq!(k.hash, hash64(b"bob"));
        assert!(by_query.key(&headers, Some("a=1"), source, || 0).is_none());

        let by_source = spec(&|s| s.source_ip = true);
        let k = by_source.key(&headers, None, source, || 0).expect("keyed");
        assert_eq!(k.hash, hash64(b"198.18.0.9"));

        let cookie = |ttl| {
            spec(&move |s| {
                s.cookie = Some(crate::snapshot::HashCookie {
                    name: "session".into(),
                    path: Some("/".into()),
                    ttl_s: ttl,
                })
            })
        };
        let k = cookie(Some(60))
            .key(&headers, None, source, || 0)
            .expect("keyed");
        assert_eq!((k.hash, k.set_cookie), (hash64(b"abc"), None));
        let made = cookie(Some(60))
            .key(&HeaderMap::new(), None, source, || 0xab)
            .expect("keyed");
        assert_eq!(made.hash, hash64(b"00000000000000ab"));
        assert_eq!(
            made.set_cookie.expect("set"),
            "session=\"00000000000000ab\"; Path=/; Max-Age=60; HttpOnly"
        );
        let session = cookie(Some(0))
            .key(&HeaderMap::new(), None, source, || 1)
            .expect("keyed");
        assert!(
            !session
                .set_cookie
                .expect("set")
                .to_str()
                .unwrap_or("")
                .contains("Max-Age")
        );
        assert!(
            cookie(None)
                .key(&HeaderMap::new(), None, source, || 1)
                .is_none()
        );
    }
}
