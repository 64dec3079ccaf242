//! Reading and writing a proxy-wasm guest's memory, and the ABI's wire forms: status codes,
//! serialized header maps and property paths.
//!
//! Every pointer and length comes from the guest and is checked against its memory; a bad
//! one is `BadArgument` (or a trap, where the ABI has no status to give), never a host panic.

use super::ctx::ProxyCtx;
use wasmtime::Caller;

/// The ABI's status codes (proxy-wasm v0.2.1).
pub(crate) mod status {
    pub(crate) const OK: i32 = 0;
    pub(crate) const NOT_FOUND: i32 = 1;
    pub(crate) const BAD_ARGUMENT: i32 = 2;
    pub(crate) const EMPTY: i32 = 7;
    pub(crate) const CAS_MISMATCH: i32 = 8;
    pub(crate) const INTERNAL_FAILURE: i32 = 10;
}

/// The most bytes the host reads from a guest in one call (a header map, a local reply's
/// body, a shared-data value): bounds the copy a hostile length could ask for.
pub(crate) const MAX_READ: usize = 1 << 20;

/// Why a guest's arguments could not be used.
pub(crate) struct BadArgument;

type Call<'a> = Caller<'a, ProxyCtx>;

fn range(ptr: i32, len: i32, limit: usize) -> Result<std::ops::Range<usize>, BadArgument> {
    let start = ptr as u32 as usize;
    let len = len as u32 as usize;
    if len > limit {
        return Err(BadArgument);
    }
    let end = start.checked_add(len).ok_or(BadArgument)?;
    Ok(start..end)
}

/// A copy of `len` bytes at `ptr`.
pub(crate) fn read(c: &mut Call<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, BadArgument> {
    let memory = c.data().guest_memory.ok_or(BadArgument)?;
    let range = range(ptr, len, MAX_READ)?;
    memory
        .data(&*c)
        .get(range)
        .map(<[u8]>::to_vec)
        .ok_or(BadArgument)
}

/// `len` bytes at `ptr` as text (lossy: header names and keys are compared as text).
pub(crate) fn read_text(c: &mut Call<'_>, ptr: i32, len: i32) -> Result<String, BadArgument> {
    read(c, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Writes `bytes` at `ptr`.
pub(crate) fn write(c: &mut Call<'_>, ptr: i32, bytes: &[u8]) -> Result<(), BadArgument> {
    let memory = c.data().guest_memory.ok_or(BadArgument)?;
    memory
        .write(&mut *c, ptr as u32 as usize, bytes)
        .map_err(|_| BadArgument)
}

/// Writes a little-endian u32 at `ptr`.
pub(crate) fn write_u32(c: &mut Call<'_>, ptr: i32, value: u32) -> Result<(), BadArgument> {
    write(c, ptr, &value.to_le_bytes())
}

/// Writes a little-endian u64 at `ptr`.
pub(crate) fn write_u64(c: &mut Call<'_>, ptr: i32, value: u64) -> Result<(), BadArgument> {
    write(c, ptr, &value.to_le_bytes())
}

/// Hands `data` to the guest: allocated with its allocator, copied in, and its address and
/// length written at `ret_ptr` and `ret_len`, as the ABI returns every variable-size value.
/// The allocator is guest code: it runs under the call's deadline and may trap.
pub(crate) fn give(
    c: &mut Call<'_>,
    data: &[u8],
    ret_ptr: i32,
    ret_len: i32,
) -> wasmtime::Result<i32> {
    let Some(malloc) = c.data().malloc.clone() else {
        return Ok(status::INTERNAL_FAILURE);
    };
    let Ok(len) = i32::try_from(data.len()) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let at = malloc.call(&mut *c, len)?;
    if data.is_empty() {
        // An empty value still needs a pointer the guest can take ownership of.
        let done = write_u32(c, ret_ptr, at as u32).and_then(|()| write_u32(c, ret_len, 0));
        return Ok(done.map_or(status::BAD_ARGUMENT, |()| status::OK));
    }
    if at == 0 {
        return Ok(status::INTERNAL_FAILURE);
    }
    let done = write(c, at, data)
        .and_then(|()| write_u32(c, ret_ptr, at as u32))
        .and_then(|()| write_u32(c, ret_len, len as u32));
    Ok(done.map_or(status::BAD_ARGUMENT, |()| status::OK))
}

/// A header map in the ABI's form: the pair count, each pair's key and value lengths, then
/// each key and value followed by a NUL (all integers u32 little-endian).
pub(crate) fn serialize_pairs<'a>(
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
) -> Vec<u8> {
    let count = pairs.clone().count();
    let mut out = Vec::with_capacity(
        4 + count * 8
            + pairs
                .clone()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>(),
    );
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The pairs of a serialized header map; `None` when it is malformed.
pub(crate) fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = u32_at(0)?;
    // Each pair takes at least 10 bytes: two lengths and two NULs.
    if count > bytes.len() / 10 + 1 {
        return None;
    }
    let mut lengths = Vec::with_capacity(count);
    for i in 0..count {
        lengths.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + count * 8;
    let mut pairs = Vec::with_capacity(count);
    for (klen, vlen) in lengths {
        let key = bytes.get(at..at.checked_add(klen)?)?.to_vec();
        at = at.checked_add(klen)?.checked_add(1)?;
        let value = bytes.get(at..at.checked_add(vlen)?)?.to_vec();
        at = at.checked_add(vlen)?.checked_add(1)?;
        pairs.push((key, value));
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_round_trip_in_the_abi_form() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/a"), (b"x-empty", b"")];
        let bytes = serialize_pairs(pairs.iter().copied());
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        let back = deserialize_pairs(&bytes).expect("well formed");
        assert_eq!(
            back,
            vec![
                (b":path".to_vec(), b"/a".to_vec()),
                (b"x-empty".to_vec(), Vec::new())
            ]
        );
    }

    #[test]
    fn malformed_header_maps_are_refused_not_panicked_on() {
        assert!(deserialize_pairs(&[1, 0, 0, 0]).is_none());
        assert!(deserialize_pairs(&[255, 255, 255, 255, 0]).is_none());
        let mut bytes = serialize_pairs([(&b"k"[..], &b"v"[..])].into_iter());
        bytes.truncate(bytes.len() - 2);
        assert!(deserialize_pairs(&bytes).is_none());
        assert_eq!(deserialize_pairs(&[]), Some(Vec::new()));
    }
}
