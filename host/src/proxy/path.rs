//! Request paths normalized as Istio normalizes them before authorization and routing, so
//! `/public/../admin`, `/./admin` and `/%61dmin` are all `/admin` to an AuthorizationPolicy —
//! and to the app, which is sent the normalized path, so it serves what was authorized.
//!
//! Istio's options (MeshConfig `pathNormalization`), each adding to the one before:
//! - `NONE`: the path as received.
//! - `BASE` (Istio's default): percent-encoded unreserved characters decoded (`%2D` `%2E`
//!   `%30`–`%39` `%41`–`%5A` `%5F` `%61`–`%7A` `%7E`, either case), backslashes made slashes,
//!   and `.` and `..` segments resolved as RFC 3986 §5.2.4 says.
//! - `MERGE_SLASHES`: runs of slashes merged into one.
//! - `DECODE_AND_MERGE_SLASHES`: `%2F` and `%5C` decoded first (into `/` and `\`).
//!
//! The query is left as it came (Istio matches paths without it). A path that cannot be
//! normalized is refused with 400: `%00`, a `%` not followed by two hex digits, or a path that
//! does not start with `/`.

use std::borrow::Cow;

/// How request paths are normalized (Istio's `pathNormalization.normalization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Normalization {
    /// As received.
    None,
    /// RFC 3986 plus backslashes and unreserved escapes (Istio's default).
    #[default]
    Base,
    /// `Base`, then runs of slashes merged.
    MergeSlashes,
    /// `%2F` and `%5C` decoded, then `MergeSlashes`.
    DecodeAndMergeSlashes,
}

impl Normalization {
    /// Reads Istio's option names.
    pub fn parse(text: &str) -> Option<Normalization> {
        Some(match text {
            "NONE" => Normalization::None,
            "BASE" | "DEFAULT" => Normalization::Base,
            "MERGE_SLASHES" => Normalization::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => Normalization::DecodeAndMergeSlashes,
            _ => return None,
        })
    }
}

/// Why a path cannot be normalized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// `%00`, which Istio always refuses.
    #[error("the path holds %00")]
    Nul,
    /// A `%` not followed by two hex digits.
    #[error("the path holds a malformed percent-encoding")]
    BadEscape,
    /// Not an absolute path.
    #[error("the path does not start with '/'")]
    NotAbsolute,
}

/// The value of an ASCII hex digit.
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `c` is one of the characters Istio's BASE decodes from its escape.
fn decoded_by_base(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Normalizes `path_and_query` under `mode`; the input itself when nothing changes (the usual
/// case costs one scan and no allocation).
pub fn normalize(path_and_query: &str, mode: Normalization) -> Result<Cow<'_, str>, Malformed> {
    if mode == Normalization::None {
        return Ok(Cow::Borrowed(path_and_query));
    }
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    if !path.starts_with('/') {
        // `*` (OPTIONS *) names no resource; there is nothing to normalize.
        if path == "*" {
            return Ok(Cow::Borrowed(path_and_query));
        }
        return Err(Malformed::NotAbsolute);
    }
    if !needs_work(path, mode) {
        return Ok(Cow::Borrowed(path_and_query));
    }
    // 1. Escapes: %00 refused, unreserved ones decoded, %2F/%5C only when asked.
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            decoded.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(Malformed::BadEscape);
        };
        let c = hi << 4 | lo;
        let decode = c != 0
            && (decoded_by_base(c)
                || (mode == Normalization::DecodeAndMergeSlashes && matches!(c, b'/' | b'\\')));
        if c == 0 {
            return Err(Malformed::Nul);
        }
        if decode {
            decoded.push(c);
        } else {
            decoded.extend_from_slice(&bytes[i..i + 3]);
        }
        i += 3;
    }
    // 2. Backslashes are slashes.
    for b in &mut decoded {
        if *b == b'\\' {
            *b = b'/';
        }
    }
    // 3. Dot segments (RFC 3986 §5.2.4), on segments between slashes.
    let text = String::from_utf8_lossy(&decoded);
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = text[1..].split('/').collect();
    let last = segments.len() - 1;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if n == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if n == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(text.len() + query.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() {
        path.push('/');
    }
    // 4. Runs of slashes.
    if matches!(
        mode,
        Normalization::MergeSlashes | Normalization::DecodeAndMergeSlashes
    ) && path.contains("//")
    {
        let mut merged = String::with_capacity(path.len());
        for c in path.chars() {
            if !(c == '/' && merged.ends_with('/')) {
                merged.push(c);
            }
        }
        path = merged;
    }
    path.push_str(query);
    Ok(Cow::Owned(path))
}

/// Whether anything in `path` could change: an escape, a backslash, a dot segment, or (when
/// merging) two slashes in a row.
fn needs_work(path: &str, mode: Normalization) -> bool {
    let b = path.as_bytes();
    b.iter().any(|&c| c == b'%' || c == b'\\')
        || path.contains("/.")
        || (mode != Normalization::Base && path.contains("//"))
}

/// Whether a method is as Istio accepts it: Istio refuses (400) a method not in upper case.
pub fn method_is_upper(method: &http::Method) -> bool {
    !method.as_str().bytes().any(|b| b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Normalization::*;

    fn n(path: &str, mode: Normalization) -> Result<String, Malformed> {
        normalize(path, mode).map(Cow::into_owned)
    }

    /// Istio's documented examples ("Authorization Policy Normalization" and the security
    /// best-practices table), each under every option.
    #[test]
    fn istios_examples() {
        let table: &[(&str, [&str; 4])] = &[
            // (original, [NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES])
            ("/a/../b", ["/a/../b", "/b", "/b", "/b"]),
            ("/%2E/b", ["/%2E/b", "/b", "/b", "/b"]),
            ("/a/%2E%2E/b", ["/a/%2E%2E/b", "/b", "/b", "/b"]),
            ("/a\\b", ["/a\\b", "/a/b", "/a/b", "/a/b"]),
            ("/a%2fb", ["/a%2fb", "/a%2fb", "/a%2fb", "/a/b"]),
            ("/a%2Fb", ["/a%2Fb", "/a%2Fb", "/a%2Fb", "/a/b"]),
            ("/a%5cb", ["/a%5cb", "/a%5cb", "/a%5cb", "/a/b"]),
            ("/a//b", ["/a//b", "/a//b", "/a/b", "/a/b"]),
            (
                "/some%2fdata/%61%62%63",
                [
                    "/some%2fdata/%61%62%63",
                    "/some%2fdata/abc",
                    "/some%2fdata/abc",
                    "/some/data/abc",
                ],
            ),
            (
                "/some\\data",
                ["/some\\data", "/some/data", "/some/data", "/some/data"],
            ),
            (
                "/some//data///abc",
                [
                    "/some//data///abc",
                    "/some//data///abc",
                    "/some/data/abc",
                    "/some/data/abc",
                ],
            ),
            (
                "/public/./data/abc/../xyz",
                [
                    "/public/./data/abc/../xyz",
                    "/public/data/xyz",
                    "/public/data/xyz",
                    "/public/data/xyz",
                ],
            ),
            ("/foo?v=1", ["/foo?v=1", "/foo?v=1", "/foo?v=1", "/foo?v=1"]),
            (
                "/a/../b?x=/../y",
                ["/a/../b?x=/../y", "/b?x=/../y", "/b?x=/../y", "/b?x=/../y"],
            ),
        ];
        for (original, want) in table {
            for (mode, want) in [None, Base, MergeSlashes, DecodeAndMergeSlashes]
                .into_iter()
                .zip(want)
            {
                assert_eq!(
                    n(original, mode).as_deref(),
                    Ok(*want),
                    "{original} {mode:?}"
                );
            }
        }
    }

    #[test]
    fn the_attacks_on_a_deny_policy_all_read_as_admin() {
        for attack in [
            "/admin",
            "/public/../admin",
            "/./admin",
            "/%61dmin",
            "/%2e/admin",
            "/x/%2E%2E/admin",
            "/public/..\\admin",
            "/../admin",
            "/../../admin",
        ] {
            assert_eq!(n(attack, Base).as_deref(), Ok("/admin"), "{attack}");
        }
    }

    #[test]
    fn dot_segments_follow_rfc_3986() {
        for (input, want) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/..", "/"),
            ("/.", "/"),
            ("/a/.../b", "/a/.../b"),
            ("/a/..b/c", "/a/..b/c"),
            ("/", "/"),
        ] {
            assert_eq!(n(input, Base).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn what_cannot_be_normalized_is_refused() {
        assert_eq!(n("/a%00b", Base), Err(Malformed::Nul));
        assert_eq!(n("/a%0", Base), Err(Malformed::BadEscape));
        assert_eq!(n("/a%zzb", Base), Err(Malformed::BadEscape));
        assert_eq!(n("a/b", Base), Err(Malformed::NotAbsolute));
        assert_eq!(n("*", Base).as_deref(), Ok("*"));
        // Other escapes are kept as they came.
        assert_eq!(n("/a%20b%3F", Base).as_deref(), Ok("/a%20b%3F"));
    }

    #[test]
    fn a_plain_path_is_borrowed_not_copied() {
        assert!(matches!(
            normalize("/charge/42?x=1", Base),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(
            normalize("/v1.2/items", MergeSlashes),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn methods_must_be_upper_case() {
        assert!(method_is_upper(&http::Method::GET));
        let lower = http::Method::from_bytes(b"get").expect("method");
        assert!(!method_is_upper(&lower));
        let custom = http::Method::from_bytes(b"PURGE").expect("method");
        assert!(method_is_upper(&custom));
    }
}
