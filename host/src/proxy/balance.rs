//! Load balancing within a subset: power of two choices over least outstanding requests (the
//! default, Istio's LEAST_REQUEST), round robin or random, skipping ejected endpoints and, on a
//! retry, the endpoint that just failed when another exists. A pure function over a snapshot of
//! the candidates, so it is table-tested without sockets.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How a pick is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Power of two choices over least outstanding requests.
    LeastRequest,
    /// The `n`th of the healthy candidates, modulo their number.
    RoundRobin(usize),
    /// Uniformly at random.
    Random,
}

/// A route's balancing: its policy, and the turn counter round robin needs.
#[derive(Debug)]
pub struct Balancer {
    kind: Kind,
    turn: AtomicUsize,
}

/// The policy a snapshot names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `leastRequest` (default).
    LeastRequest,
    /// `roundRobin`.
    RoundRobin,
    /// `random`.
    Random,
}

impl Kind {
    /// The policy named in a snapshot (`leastRequest`, `roundRobin`, `random`).
    pub fn parse(name: &str) -> Option<Kind> {
        match name {
            "leastRequest" => Some(Kind::LeastRequest),
            "roundRobin" => Some(Kind::RoundRobin),
            "random" => Some(Kind::Random),
            _ => None,
        }
    }
}

impl Balancer {
    /// A balancer of this kind.
    pub fn new(kind: Kind) -> Self {
        Balancer {
            kind,
            turn: AtomicUsize::new(0),
        }
    }

    /// The policy for the next pick.
    pub fn next(&self) -> Policy {
        match self.kind {
            Kind::LeastRequest => Policy::LeastRequest,
            Kind::Random => Policy::Random,
            Kind::RoundRobin => Policy::RoundRobin(self.turn.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

/// An endpoint that may be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Endpoint id.
    pub id: u64,
    /// Requests in flight to it now.
    pub outstanding: u32,
    /// Whether it is ejected.
    pub ejected: bool,
}

/// Picks an endpoint, or none when every candidate is ejected. `random(n)` returns a uniform
/// index below `n`. The candidates are walked again rather than collected: a pick allocates
/// nothing.
pub fn pick<I>(
    candidates: I,
    avoid: Option<u64>,
    policy: Policy,
    mut random: impl FnMut(usize) -> usize,
) -> Option<u64>
where
    I: Iterator<Item = Candidate> + Clone,
{
    let healthy = |c: &Candidate| !c.ejected;
    let fresh = |c: &Candidate| !c.ejected && Some(c.id) != avoid;
    // The healthy candidates but the one to avoid, or every healthy one when that leaves none.
    let fresh_count = candidates.clone().filter(fresh).count();
    let (n, keep): (usize, &dyn Fn(&Candidate) -> bool) = if fresh_count > 0 {
        (fresh_count, &fresh)
    } else {
        (candidates.clone().filter(healthy).count(), &healthy)
    };
    let nth = |i: usize| candidates.clone().filter(|c| keep(c)).nth(i);
    match (n, policy) {
        (0, _) => None,
        (1, _) => nth(0).map(|c| c.id),
        (n, Policy::Random) => nth(random(n)).map(|c| c.id),
        (n, Policy::RoundRobin(turn)) => nth(turn % n).map(|c| c.id),
        (n, Policy::LeastRequest) => {
            let a = random(n);
            let mut b = random(n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a)?, nth(b)?);
            Some(if b.outstanding < a.outstanding {
                b.id
            } else {
                a.id
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u64, outstanding: u32, ejected: bool) -> Candidate {
        Candidate {
            id,
            outstanding,
            ejected,
        }
    }

    /// (candidates, endpoint to avoid, random indices drawn, expected pick)
    type Case = (Vec<Candidate>, Option<u64>, Vec<usize>, Option<u64>);

    #[test]
    fn table() {
        let cases: Vec<Case> = vec![
            (vec![], None, vec![], None),
            (vec![c(1, 0, true)], None, vec![], None),
            (vec![c(1, 9, false)], None, vec![], Some(1)),
            // The less loaded of the two sampled wins.
            (
                vec![c(1, 5, false), c(2, 1, false)],
                None,
                vec![0, 0],
                Some(2),
            ),
            (
                vec![c(1, 1, false), c(2, 5, false)],
                None,
                vec![0, 0],
                Some(1),
            ),
            // Ejected endpoints are never sampled.
            (vec![c(1, 0, true), c(2, 7, false)], None, vec![], Some(2)),
            // A retry avoids the endpoint that failed...
            (
                vec![c(1, 0, false), c(2, 50, false)],
                Some(1),
                vec![],
                Some(2),
            ),
            // ...unless it is the only healthy one.
            (
                vec![c(1, 0, false), c(2, 0, true)],
                Some(1),
                vec![],
                Some(1),
            ),
        ];
        for (i, (candidates, avoid, randoms, expected)) in cases.into_iter().enumerate() {
            let mut r = randoms.into_iter();
            let got = pick(
                candidates.iter().copied(),
                avoid,
                Policy::LeastRequest,
                |_| r.next().unwrap_or(0),
            );
            assert_eq!(got, expected, "case {i}");
        }
    }

    #[test]
    fn spreads_load_evenly_when_idle() {
        let candidates: Vec<Candidate> = (1..=4).map(|id| c(id, 0, false)).collect();
        let mut seed = 12345u64;
        let mut counts = [0u32; 5];
        for _ in 0..40_000 {
            let got = pick(
                candidates.iter().copied(),
                None,
                Policy::LeastRequest,
                |n| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % n as u64) as usize
                },
            );
            counts[got.unwrap_or(0) as usize] += 1;
        }
        for (id, count) in counts.iter().enumerate().skip(1) {
            assert!((9_000..11_000).contains(count), "endpoint {id}: {count}");
        }
    }

    #[test]
    fn round_robin_takes_turns_over_the_healthy_and_random_ignores_load() {
        let candidates = [
            c(1, 0, false),
            c(2, 0, true),
            c(3, 0, false),
            c(4, 9, false),
        ];
        let b = Balancer::new(Kind::RoundRobin);
        let turns: Vec<Option<u64>> = (0..6)
            .map(|_| pick(candidates.iter().copied(), None, b.next(), |_| 0))
            .collect();
        assert_eq!(
            turns,
            [1, 3, 4, 1, 3, 4].map(Some).to_vec(),
            "ejected endpoint 2 skipped"
        );
        // Random takes the drawn index even when that endpoint is the busiest.
        assert_eq!(
            pick(candidates.iter().copied(), None, Policy::Random, |_| 2),
            Some(4)
        );
        assert_eq!(Kind::parse("roundRobin"), Some(Kind::RoundRobin));
        assert_eq!(Kind::parse("ROUND_ROBIN"), None);
    }
}
