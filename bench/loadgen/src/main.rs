//! Open-loop HTTP/1.1 load at a fixed rate.
//!
//! `weft-loadgen ADDR RATE SECONDS CONNS [HOST]` sends `RATE` requests per second for `SECONDS`
//! over `CONNS` keep-alive connections to `ADDR` (`127.0.0.1:18101`), `GET /` with `Host: HOST`.
//! Sends are evenly spaced: connection `i` sends at `t0 + i/RATE + k*CONNS/RATE`, so the load is
//! smooth rather than in bursts (closed-loop tools such as hey fire their workers in lockstep,
//! and then measure their own queue). Each connection has one request in flight; a send that
//! cannot go out on time because the previous answer is late is counted as `late` (more than
//! 1 ms behind its schedule), so a saturated path shows as such instead of as good latency.
//! Latency runs from the write of the request to the last byte of the response.
//!
//! Prints one line: `sent ok errors late p50_us p90_us p99_us max_us`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: weft-loadgen ADDR RATE SECONDS CONNS [HOST]");
        std::process::exit(2);
    }
    let parse = |i: usize, what: &str| -> u64 {
        args[i].parse().unwrap_or_else(|_| {
            eprintln!("weft-loadgen: {what} must be a positive integer, got {:?}", args[i]);
            std::process::exit(2)
        })
    };
    let addr = args[1].clone();
    let rate = parse(2, "RATE").max(1);
    let seconds = parse(3, "SECONDS").max(1);
    let conns = parse(4, "CONNS").clamp(1, rate);
    let host = args.get(5).cloned().unwrap_or_else(|| "localhost".into());
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: weft-loadgen\r\n\r\n");
    let period = Duration::from_nanos(1_000_000_000 * conns / rate);
    let per_conn = rate * seconds / conns;
    let t0 = Instant::now() + Duration::from_millis(100);
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            let (addr, request) = (addr.clone(), request.clone());
            let offset = Duration::from_nanos(1_000_000_000 * i / rate);
            std::thread::spawn(move || run(&addr, request.as_bytes(), t0 + offset, period, per_conn))
        })
        .collect();
    let mut all = Stats::default();
    for w in workers {
        match w.join() {
            Ok(s) => all.merge(s),
            Err(_) => all.errors += per_conn,
        }
    }
    all.latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if all.latencies.is_empty() {
            return 0;
        }
        let i = ((all.latencies.len() as f64 * p).ceil() as usize).clamp(1, all.latencies.len());
        all.latencies[i - 1]
    };
    println!(
        "{} {} {} {} {} {} {} {}",
        all.sent,
        all.latencies.len(),
        all.errors,
        all.late,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        all.latencies.last().copied().unwrap_or(0)
    );
}

#[derive(Default)]
struct Stats {
    sent: u64,
    errors: u64,
    late: u64,
    latencies: Vec<u64>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.sent += o.sent;
        self.errors += o.errors;
        self.late += o.late;
        self.latencies.extend(o.latencies);
    }
}

fn run(addr: &str, request: &[u8], start: Instant, period: Duration, count: u64) -> Stats {
    let mut stats = Stats {
        latencies: Vec::with_capacity(count as usize),
        ..Stats::default()
    };
    let mut conn: Option<TcpStream> = None;
    let mut buf = vec![0u8; 64 * 1024];
    for k in 0..count {
        let due = start + period * k as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > Duration::from_millis(1) {
            stats.late += 1;
        }
        stats.sent += 1;
        let stream = match conn.take() {
            Some(s) => s,
            None => match TcpStream::connect(addr) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    s
                }
                Err(_) => {
                    stats.errors += 1;
                    continue;
                }
            },
        };
        let sent_at = Instant::now();
        match exchange(stream, request, &mut buf) {
            Some(reusable) => {
                stats.latencies.push(sent_at.elapsed().as_micros() as u64);
                conn = reusable;
            }
            None => stats.errors += 1,
        }
    }
    stats
}

/// Writes the request and reads one whole `200` response (`None` otherwise); inside, the
/// stream back if it can carry the next request.
fn exchange(mut s: TcpStream, request: &[u8], buf: &mut [u8]) -> Option<Option<TcpStream>> {
    s.write_all(request).ok()?;
    let mut have = 0;
    let head_end = loop {
        let n = s.read(&mut buf[have..]).ok()?;
        if n == 0 {
            return None;
        }
        have += n;
        if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if have == buf.len() {
            return None;
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?.to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return None;
    }
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        let mut body = have - head_end;
        while body < len {
            let n = s.read(buf).ok()?;
            if n == 0 {
                return None;
            }
            body += n;
        }
    } else if head.contains("transfer-encoding: chunked") {
        // Enough for the small bodies the benchmark serves: read to the last chunk.
        let mut tail: Vec<u8> = buf[head_end..have].to_vec();
        while !tail.ends_with(b"0\r\n\r\n") {
            let n = s.read(buf).ok()?;
            if n == 0 {
                return None;
            }
            tail.extend_from_slice(&buf[..n]);
        }
    } else {
        return None;
    }
    if head.contains("connection: close") {
        return Some(None);
    }
    Some(Some(s))
}
