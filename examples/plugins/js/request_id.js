// request-id: a Weft filter plugin in JavaScript, against weft:filter@0.1.0 (wit/filter.wit).
//
// on-request: if the request lacks the header (default `x-correlation-id`), set it to
// prefix + a random 128-bit id (32 lower-case hex digits) drawn from the host's
// `random-u64`. on-response: put the call's id on the response under the same header, so
// the caller sees it too, whether it sent the id or this plugin made it.
//
// Carrying the id from on-request to on-response: instances are pooled, so the two hooks of
// one call may run on different instances and nothing about a call may be kept in this
// module's memory between them. The response hook cannot read the request either (the
// `request` interface is valid during on-request only), and a random id cannot be re-derived
// from the call-id. So the id travels through the host's shared state, the contract's means
// for what must outlive a hook: on-request writes it under a key made of the call-id, with a
// TTL, and on-response reads and deletes it. The TTL bounds what a call that never reaches
// on-response (a caller gone, a plugin failing) leaves behind. Call-ids are unique within a
// sidecar, and the shared state is the sidecar's, private to this plugin's name.
//
// Config (JSON, both fields optional):
//   {"header": "x-correlation-id", "prefix": ""}
// Module-level variables hold only this instance's configuration, set once by `configure`.

import { header as requestHeader, setHeader as setRequestHeader } from 'weft:filter/request@0.1.0';
import { setHeader as setResponseHeader } from 'weft:filter/response@0.1.0';
import { log, randomU64, stateGet, stateSet, stateDelete } from 'weft:filter/host@0.1.0';

const DEFAULTS = { header: 'x-correlation-id', prefix: '' };
// How long a call's id is kept for its on-response: longer than any sane call.
const TTL_MS = 10 * 60 * 1000;
// An HTTP header name (RFC 9110 token); pseudo-headers (`:path`) are not headers.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;
// Printable ASCII: what a prefix may hold, as the id goes into a header value.
const PRINTABLE = /^[\x21-\x7e]*$/;
const MAX_PREFIX = 128;

let headerName = DEFAULTS.header;
let prefix = DEFAULTS.prefix;
const encoder = new TextEncoder();

/** Parses and checks the configuration; throws a message naming the field at fault. */
function parseConfig(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw `config: not JSON (${e.message})`;
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw `config: expected a JSON object like {"header": "x-correlation-id", "prefix": ""}, got ${
      value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value}`;
  }
  for (const key of Object.keys(value)) {
    if (!Object.hasOwn(DEFAULTS, key)) {
      throw `${key}: unknown field (known: header, prefix)`;
    }
  }
  const config = { ...DEFAULTS };
  if (value.header !== undefined) {
    if (typeof value.header !== 'string') {
      throw `header: expected a string, got ${typeof value.header}`;
    }
    const name = value.header.toLowerCase();
    if (!TOKEN.test(name)) {
      throw `header: ${JSON.stringify(value.header)} is not a valid HTTP header name`;
    }
    config.header = name;
  }
  if (value.prefix !== undefined) {
    if (typeof value.prefix !== 'string') {
      throw `prefix: expected a string, got ${typeof value.prefix}`;
    }
    if (!PRINTABLE.test(value.prefix) || value.prefix.length > MAX_PREFIX) {
      throw `prefix: at most ${MAX_PREFIX} printable ASCII characters, no spaces`;
    }
    config.prefix = value.prefix;
  }
  return config;
}

/** 128 random bits as 32 lower-case hex digits. */
function randomId() {
  return randomU64().toString(16).padStart(16, '0') + randomU64().toString(16).padStart(16, '0');
}

/** The shared-state key of a call (`callId` is a BigInt: a u64). */
function keyOf(callId) {
  return `call:${callId.toString(16)}`;
}

function describe(e) {
  return e && e.payload !== undefined ? JSON.stringify(e.payload) : String(e);
}

export const filter = {
  configure(config) {
    // A thrown string is the `err` of `result<hooks, string>`.
    const c = parseConfig(config);
    headerName = c.header;
    prefix = c.prefix;
    return { onRequest: true, onAttemptEnd: false, onResponse: true, onDone: false };
  },

  onRequest(callId) {
    let id = requestHeader(headerName);
    if (id === undefined) {
      id = encoder.encode(prefix + randomId());
      try {
        setRequestHeader(headerName, id);
      } catch (e) {
        log('warn', `cannot set ${headerName}: ${describe(e)}`);
        return;
      }
    }
    try {
      stateSet(keyOf(callId), id, undefined, TTL_MS);
    } catch (e) {
      // `full` or `too-large`: the request keeps its id; only the response goes without it.
      log('warn', `cannot keep ${headerName} for the response: ${describe(e)}`);
    }
  },

  onAttemptEnd(_attempt) {
    return { tag: 'done' };
  },

  onResponse(callId) {
    const key = keyOf(callId);
    const kept = stateGet(key);
    if (kept === undefined) {
      return; // on-request did not run for this call (an earlier plugin answered), or expired
    }
    stateDelete(key);
    try {
      setResponseHeader(headerName, kept.value);
    } catch (e) {
      log('warn', `cannot set ${headerName} on the response: ${describe(e)}`);
    }
  },

  onDone(_summary) {},
};
