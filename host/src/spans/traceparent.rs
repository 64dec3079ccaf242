//! W3C trace context (`traceparent: 00-<trace id>-<parent id>-<flags>`): read, and written
//! with this hop's span as the parent of the next.

use http::HeaderValue;

/// One `traceparent`, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The span the sender made the call in.
    pub parent_id: [u8; 8],
    /// Whether the sender sampled the trace.
    pub sampled: bool,
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn read_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(out)
}

impl TraceParent {
    /// Reads a version-00 value (lower-case hex, ids not all zero), as the W3C specification
    /// says a receiver must; anything else is no parent.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        if value.len() != 55 || &value[..3] != b"00-" || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let trace_id: [u8; 16] = read_hex(&value[3..35])?;
        let parent_id: [u8; 8] = read_hex(&value[36..52])?;
        let flags: [u8; 1] = read_hex(&value[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    /// The value that makes `span` the parent of the next hop.
    pub fn with_parent(&self, span: [u8; 8]) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for (i, b) in self.trace_id.iter().enumerate() {
            out[3 + 2 * i] = HEX[usize::from(b >> 4)];
            out[4 + 2 * i] = HEX[usize::from(b & 15)];
        }
        for (i, b) in span.iter().enumerate() {
            out[36 + 2 * i] = HEX[usize::from(b >> 4)];
            out[37 + 2 * i] = HEX[usize::from(b & 15)];
        }
        if self.sampled {
            out[54] = b'1';
        }
        HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLED: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_the_specifications_example_and_writes_the_next_hop() {
        let tp = TraceParent::parse(SAMPLED).expect("valid");
        assert!(tp.sampled);
        assert_eq!(
            tp.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        let next = tp.with_parent([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            next,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        assert_eq!(
            TraceParent::parse(next.as_bytes()).map(|t| t.trace_id),
            Some(tp.trace_id)
        );
    }

    #[test]
    fn refuses_what_a_receiver_must_not_use() {
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"",
        ] {
            assert_eq!(
                TraceParent::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let unsampled =
            TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert_eq!(unsampled.map(|t| t.sampled), Some(false));
    }
}
