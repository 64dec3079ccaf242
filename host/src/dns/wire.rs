//! The DNS wire format, as much of it as a stub resolver's questions need (RFC 1035): one
//! question read from a query, and answers with A records built for it. Anything else a
//! message may hold is left to the upstream resolver, which gets the message unchanged.

use std::net::Ipv4Addr;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Class IN.
pub const CLASS_IN: u16 = 1;
/// Response code: no error.
pub const NOERROR: u8 = 0;
/// Response code: the server failed.
pub const SERVFAIL: u8 = 2;
/// Response code: the name does not exist.
pub const NXDOMAIN: u8 = 3;

/// A standard query with one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    /// The message id the answer must carry.
    pub id: u16,
    /// Whether the client asked for recursion (copied into the answer).
    pub recursion_desired: bool,
    /// The name asked for, lower case, without the trailing dot.
    pub name: String,
    /// The record type.
    pub qtype: u16,
    /// The class.
    pub qclass: u16,
    /// The question section as sent, echoed in the answer.
    question: &'a [u8],
}

/// Reads a standard query (QR clear, opcode QUERY, exactly one question, uncompressed name);
/// none for any other message, which is not for this server to answer.
pub fn parse_query(msg: &[u8]) -> Option<Query<'_>> {
    let header = msg.get(..12)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let is_response = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xf;
    let questions = u16::from_be_bytes([header[4], header[5]]);
    if is_response || opcode != 0 || questions != 1 {
        return None;
    }
    let mut at = 12;
    let mut name = String::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // A pointer (0b11…) or a reserved label type: not in a plain question.
        if len > 63 {
            return None;
        }
        let label = msg.get(at..at + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            // Names the mesh owns are letters, digits, '-' and '_'; anything else is passed on
            // as it came, since it is then not a mesh name.
            name.push(char::from(b.to_ascii_lowercase()));
        }
        at += len;
        if name.len() > 253 {
            return None;
        }
    }
    let fixed = msg.get(at..at + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    Some(Query {
        id: u16::from_be_bytes([header[0], header[1]]),
        recursion_desired: flags & 0x0100 != 0,
        name,
        qtype,
        qclass,
        question: &msg[12..at + 4],
    })
}

/// The answer to `query`: `rcode`, and an A record per address valid for `ttl` seconds.
/// Authoritative, since the mesh owns the names it answers.
pub fn answer(query: &Query<'_>, rcode: u8, addrs: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + query.question.len() + addrs.len() * 16);
    out.extend_from_slice(&query.id.to_be_bytes());
    // QR, AA, RA; RD as asked.
    let mut flags: u16 = 0x8000 | 0x0400 | 0x0080 | u16::from(rcode & 0xf);
    if query.recursion_desired {
        flags |= 0x0100;
    }
    out.extend_from_slice(&flags.to_be_bytes());
    let count = u16::try_from(addrs.len()).unwrap_or(u16::MAX);
    for n in [1, count, 0, 0] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(query.question);
    for addr in addrs.iter().take(usize::from(count)) {
        // The name is the question's, by a pointer to offset 12.
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&addr.octets());
    }
    out
}

/// A standard query for `name`'s records of `qtype`, as a stub resolver sends it (tests and
/// `weft` tools use it).
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes());
    for n in [1u16, 0, 0, 0] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// An answer's id, response code and A records (what a client reads back).
pub fn read_answer(msg: &[u8]) -> Option<(u16, u8, Vec<Ipv4Addr>)> {
    let header = msg.get(..12)?;
    let id = u16::from_be_bytes([header[0], header[1]]);
    let rcode = header[3] & 0xf;
    let questions = u16::from_be_bytes([header[4], header[5]]);
    let answers = u16::from_be_bytes([header[6], header[7]]);
    let mut at = 12;
    let skip_name = |mut at: usize| -> Option<usize> {
        loop {
            let len = *msg.get(at)?;
            if len & 0xc0 == 0xc0 {
                return Some(at + 2);
            }
            at += 1 + usize::from(len);
            if len == 0 {
                return Some(at);
            }
        }
    };
    for _ in 0..questions {
        at = skip_name(at)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..answers {
        at = skip_name(at)?;
        let fixed = msg.get(at..at + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        at += 10;
        let data = msg.get(at..at + len)?;
        if rtype == TYPE_A && len == 4 {
            addrs.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += len;
    }
    Some((id, rcode, addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_reads_back_and_its_answer_carries_the_addresses() {
        let msg = query(0x1234, "Payments.Default.svc.cluster.local.", TYPE_A);
        let q = parse_query(&msg).expect("a query");
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.name, "payments.default.svc.cluster.local");
        assert_eq!((q.qtype, q.qclass), (TYPE_A, CLASS_IN));
        assert!(q.recursion_desired);
        let vip = Ipv4Addr::new(198, 19, 3, 4);
        let reply = answer(&q, NOERROR, &[vip], 30);
        assert_eq!(read_answer(&reply), Some((0x1234, NOERROR, vec![vip])));
        let none = answer(&q, NXDOMAIN, &[], 30);
        assert_eq!(read_answer(&none), Some((0x1234, NXDOMAIN, vec![])));
    }

    #[test]
    fn anything_but_a_plain_query_is_not_read() {
        let msg = query(1, "payments", TYPE_A);
        let mut response = msg.clone();
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), None);
        let mut compressed = msg.clone();
        compressed[12] = 0xc0;
        assert_eq!(parse_query(&compressed), None);
        for cut in 0..msg.len() {
            assert_eq!(parse_query(&msg[..cut]), None, "cut at {cut}");
        }
        // Arbitrary bytes never panic.
        let mut x: u32 = 7;
        for _ in 0..2000 {
            let junk: Vec<u8> = (0..40)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = parse_query(&junk);
            let _ = read_answer(&junk);
        }
    }
}
