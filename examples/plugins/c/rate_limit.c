// rate-limit: a Weft filter plugin in C.
//
// Limits the calls of every instance and worker together to `requestsPerSecond` on average,
// at most `burst` at once. Time is cut into fixed windows of burst / requestsPerSecond
// seconds (1 s by default), each letting `burst` calls through; the count lives in one of the
// host's numeric counters, keyed by the window, so every pooled instance and every worker
// sees it. A call over the limit is answered locally with 429, `retry-after` and the body
// `rate limited\n`; no upstream is called.
//
// Built against wit/filter.wit (world `plugin`) with the C bindings wit-bindgen generates
// (plugin.h / plugin.c); see build.sh and README.md.
//
// Memory, as the C bindings have it: arguments a hook receives (the `config` string) are
// owned by the plugin and freed here; strings the plugin returns (the `configure` error) are
// malloc'ed here and freed by the bindings' post-return function after the host copied them;
// what the plugin passes to an import (the local response) stays the plugin's and may live
// on the stack or in static memory; what an import returns would be the plugin's to free with
// the matching `*_free` function (this plugin calls none that return memory).

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "plugin.h"

// Both fields are bounded so every product below fits in 64 bits.
#define MAX_VALUE 1000000000ULL

// The configuration of this instance. `configure` runs once per instance, before any hook;
// nothing about a call is kept here (instances are pooled).
static uint64_t g_burst;     // calls let through per window
static uint64_t g_window_ms; // the window's length
static uint32_t g_ttl_ms;    // how long a window's counter outlives its creation

// ---- a bounded message buffer ------------------------------------------------------------

typedef struct {
    char buf[200];
    size_t len; // never more than sizeof buf; what does not fit is dropped
} msg_t;

static void msg_bytes(msg_t *m, const char *s, size_t n) {
    for (size_t i = 0; i < n && m->len < sizeof m->buf; i++) {
        m->buf[m->len++] = s[i];
    }
}

static void msg_str(msg_t *m, const char *s) {
    while (*s && m->len < sizeof m->buf) {
        m->buf[m->len++] = *s++;
    }
}

static void msg_u64(msg_t *m, uint64_t v) {
    char digits[20];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) {
        msg_bytes(m, &digits[--n], 1);
    }
}

// Quotes untrusted text (a field name, a value) for a message: at most 32 bytes, anything
// but printable ASCII shown as '?'.
static void msg_quoted(msg_t *m, const uint8_t *s, size_t n) {
    msg_str(m, "'");
    for (size_t i = 0; i < n && i < 32; i++) {
        char c = (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\'') ? (char)s[i] : '?';
        msg_bytes(m, &c, 1);
    }
    if (n > 32) {
        msg_str(m, "...");
    }
    msg_str(m, "'");
}

// ---- the configuration: a strict, minimal JSON reader ------------------------------------
//
// Accepts one JSON object whose members are `requestsPerSecond` (required) and `burst`
// (optional), each a positive integer written as JSON digits. Every read checks the length,
// so no input can read past the string (which is not NUL-terminated).

typedef struct {
    const uint8_t *s;
    size_t n, i;
    msg_t *err;
} reader_t;

static void skip_ws(reader_t *r) {
    while (r->i < r->n && (r->s[r->i] == ' ' || r->s[r->i] == '\t' || r->s[r->i] == '\n' ||
                           r->s[r->i] == '\r')) {
        r->i++;
    }
}

// The next byte after whitespace, or -1 at the end.
static int peek(reader_t *r) {
    skip_ws(r);
    return r->i < r->n ? r->s[r->i] : -1;
}

static bool fail_at(reader_t *r, const char *what) {
    msg_str(r->err, "config: not JSON: ");
    msg_str(r->err, what);
    msg_str(r->err, " at byte ");
    msg_u64(r->err, r->i);
    return false;
}

// A member name: a string without escapes (neither known field has any), returned as a
// slice of the input. Control characters are refused as JSON does.
static bool read_name(reader_t *r, const uint8_t **name, size_t *len) {
    if (peek(r) != '"') {
        return fail_at(r, "expected a field name");
    }
    size_t start = ++r->i;
    while (r->i < r->n && r->s[r->i] != '"') {
        if (r->s[r->i] < 0x20) {
            return fail_at(r, "control character in a string");
        }
        if (r->s[r->i] == '\\') {
            msg_str(r->err, "config: escapes in field names are not supported, at byte ");
            msg_u64(r->err, r->i);
            return false;
        }
        r->i++;
    }
    if (r->i >= r->n) {
        return fail_at(r, "unterminated string");
    }
    *name = r->s + start;
    *len = r->i - start;
    r->i++; // the closing quote
    return true;
}

// What a JSON value starting with `c` is; only for `"`, `{`, `[` and the three literals.
static const char *kind_of(int c) {
    switch (c) {
    case '"': return "a string";
    case '{': return "an object";
    case '[': return "an array";
    case 't':
    case 'f': return "a boolean";
    default: return "null";
    }
}

// Whether `true`, `false` or `null` starts at the reader's position.
static bool starts_literal(const reader_t *r) {
    static const char *const words[] = {"true", "false", "null"};
    for (size_t w = 0; w < 3; w++) {
        size_t k = 0;
        while (words[w][k] && r->i + k < r->n && r->s[r->i + k] == (uint8_t)words[w][k]) {
            k++;
        }
        if (!words[w][k]) {
            return true;
        }
    }
    return false;
}

static bool is_number_byte(uint8_t c) {
    return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

// A value for `field`: digits only (no sign, fraction, exponent or leading zero), 1..=MAX.
static bool read_positive(reader_t *r, const char *field, uint64_t *out) {
    int c = peek(r);
    if (c == -1) {
        return fail_at(r, "expected a value");
    }
    if (!is_number_byte((uint8_t)c)) {
        if (c != '"' && c != '{' && c != '[' && !starts_literal(r)) {
            return fail_at(r, "unexpected character");
        }
        msg_str(r->err, field);
        msg_str(r->err, ": expected a positive integer, got ");
        msg_str(r->err, kind_of(c));
        return false;
    }
    size_t start = r->i;
    while (r->i < r->n && is_number_byte(r->s[r->i])) {
        r->i++;
    }
    const uint8_t *tok = r->s + start;
    size_t len = r->i - start;
    uint64_t v = 0;
    bool ok = len > 0 && (tok[0] != '0' || len == 1);
    for (size_t k = 0; ok && k < len; k++) {
        if (tok[k] < '0' || tok[k] > '9') {
            ok = false;
        } else if (v <= MAX_VALUE) { // stop growing past the bound: no overflow
            v = v * 10 + (uint64_t)(tok[k] - '0');
        }
    }
    if (!ok || v == 0) {
        msg_str(r->err, field);
        msg_str(r->err, ": expected a positive integer, got ");
        msg_quoted(r->err, tok, len);
        return false;
    }
    if (v > MAX_VALUE) {
        msg_str(r->err, field);
        msg_str(r->err, ": must be at most ");
        msg_u64(r->err, MAX_VALUE);
        return false;
    }
    *out = v;
    return true;
}

static bool name_is(const uint8_t *name, size_t len, const char *want) {
    size_t k = 0;
    for (; k < len; k++) {
        if (want[k] == '\0' || (uint8_t)want[k] != name[k]) {
            return false;
        }
    }
    return want[k] == '\0';
}

static bool parse_config(const uint8_t *s, size_t n, uint64_t *rps, uint64_t *burst, msg_t *err) {
    reader_t r = {s, n, 0, err};
    *rps = 0;
    *burst = 0;
    int c = peek(&r);
    if (c != '{') {
        const char *got = c == -1 ? "nothing"
                          : c == '"' || c == '[' || starts_literal(&r) ? kind_of(c)
                          : c == '-' || (c >= '0' && c <= '9') ? "a number"
                                                               : NULL;
        if (!got) {
            return fail_at(&r, "unexpected character");
        }
        msg_str(err, "config: expected a JSON object, got ");
        msg_str(err, got);
        return false;
    }
    r.i++;
    if (peek(&r) == '}') {
        r.i++;
    } else {
        for (;;) {
            const uint8_t *name;
            size_t len;
            if (!read_name(&r, &name, &len)) {
                return false;
            }
            if (peek(&r) != ':') {
                return fail_at(&r, "expected ':'");
            }
            r.i++;
            uint64_t *slot;
            const char *field;
            if (name_is(name, len, "requestsPerSecond")) {
                slot = rps;
                field = "requestsPerSecond";
            } else if (name_is(name, len, "burst")) {
                slot = burst;
                field = "burst";
            } else {
                msg_str(err, "unknown field ");
                msg_quoted(err, name, len);
                msg_str(err, " (known: requestsPerSecond, burst)");
                return false;
            }
            if (*slot) {
                msg_str(err, field);
                msg_str(err, ": given twice");
                return false;
            }
            if (!read_positive(&r, field, slot)) {
                return false;
            }
            c = peek(&r);
            if (c != ',' && c != '}') {
                return fail_at(&r, "expected ',' or '}'");
            }
            r.i++;
            if (c == '}') {
                break;
            }
        }
    }
    if (peek(&r) != -1) {
        return fail_at(&r, "trailing characters");
    }
    if (!*rps) {
        msg_str(err, "requestsPerSecond: missing; give the calls per second to let through, "
                     "e.g. {\"requestsPerSecond\": 100}");
        return false;
    }
    if (!*burst) {
        *burst = *rps;
    }
    return true;
}

// ---- the filter --------------------------------------------------------------------------

static void log_info(const msg_t *m) {
    if (weft_filter_host_log_enabled(WEFT_FILTER_TYPES_LEVEL_INFO)) {
        plugin_string_t s = {(uint8_t *)m->buf, m->len}; // borrowed by the host: not freed
        weft_filter_host_log(WEFT_FILTER_TYPES_LEVEL_INFO, &s);
    }
}

bool exports_weft_filter_filter_configure(plugin_string_t *config,
                                          exports_weft_filter_filter_hooks_t *ret,
                                          plugin_string_t *err) {
    msg_t m = {.len = 0};
    uint64_t rps, burst;
    bool ok = parse_config(config->ptr, config->len, &rps, &burst, &m);
    // The argument is ours: free it now that it is parsed (nothing points into it any more).
    plugin_string_free(config);

    uint64_t window_ms = ok ? burst * 1000 / rps : 0; // at most 1e12: fits
    if (ok && window_ms == 0) {
        msg_str(&m, "burst: at ");
        msg_u64(&m, rps);
        msg_str(&m, " per second, a burst of ");
        msg_u64(&m, burst);
        msg_str(&m, " is a window under 1 ms; give at least ");
        msg_u64(&m, (rps + 999) / 1000);
        ok = false;
    }
    if (!ok) {
        // Returned memory must come from malloc: the post-return function frees it.
        plugin_string_dup_n(err, m.buf, m.len);
        return false;
    }

    g_burst = burst;
    g_window_ms = window_ms;
    // A window's counter is only needed while the window lasts; two windows' worth lets
    // late callers of a window still see it, and expiry keeps the host's key count small.
    g_ttl_ms = window_ms > UINT32_MAX / 2 ? UINT32_MAX : (uint32_t)(window_ms * 2);

    m.len = 0;
    msg_str(&m, "rate limit: ");
    msg_u64(&m, burst);
    msg_str(&m, " calls per ");
    msg_u64(&m, window_ms);
    msg_str(&m, " ms window (");
    msg_u64(&m, rps);
    msg_str(&m, "/s, burst ");
    msg_u64(&m, burst);
    msg_str(&m, ")");
    log_info(&m);

    *ret = WEFT_FILTER_TYPES_HOOKS_ON_REQUEST;
    return true;
}

static uint8_t RETRY_AFTER_NAME[] = "retry-after";
static uint8_t BODY[] = "rate limited\n";

void exports_weft_filter_filter_on_request(uint64_t call_id) {
    (void)call_id;
    if (!g_window_ms) {
        return; // never configured: the host does not call hooks then, but be safe
    }
    uint64_t now = weft_filter_host_now_ms();
    uint64_t window = now / g_window_ms;
    // The key names the window and its length, so a configuration with another window
    // (during a plugin swap) counts apart. Window numbers stay below 2^44 until the year
    // 2527 even for 1 ms windows; the low 20 bits carry the length.
    uint64_t key = (window << 20) ^ (g_window_ms & 0xFFFFF);
    int64_t count = weft_filter_host_counter_add(key, 1, g_ttl_ms);
    if (count <= (int64_t)g_burst) {
        return;
    }

    // Over the limit: answer locally. Seconds until the window ends, rounded up (1 for
    // windows up to a second).
    uint64_t left_ms = (window + 1) * g_window_ms - now;
    uint64_t secs = (left_ms + 999) / 1000;
    msg_t v = {.len = 0};
    msg_u64(&v, secs ? secs : 1);

    // Everything handed to an import is only borrowed by it: static and stack memory is
    // fine, and nothing is freed afterwards.
    weft_filter_types_header_pair_t headers[1] = {{
        .f0 = {RETRY_AFTER_NAME, sizeof RETRY_AFTER_NAME - 1},
        .f1 = {(uint8_t *)v.buf, v.len},
    }};
    weft_filter_request_local_response_t reply = {
        .status = 429,
        .headers = {headers, 1},
        .body = {BODY, sizeof BODY - 1},
    };
    weft_filter_request_respond(&reply);
}

// Hooks `configure` did not ask for: the host never calls them, but the world exports them.
void exports_weft_filter_filter_on_attempt_end(exports_weft_filter_filter_attempt_t *attempt,
                                               exports_weft_filter_filter_attempt_action_t *ret) {
    (void)attempt; // holds no memory of its own (scalars and a scalar variant)
    ret->tag = WEFT_FILTER_TYPES_ATTEMPT_ACTION_DONE;
}

void exports_weft_filter_filter_on_response(uint64_t call_id) { (void)call_id; }

void exports_weft_filter_filter_on_done(exports_weft_filter_filter_call_summary_t *summary) {
    (void)summary; // scalars and interned ids only
}
