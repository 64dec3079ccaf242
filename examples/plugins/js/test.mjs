// Runs request_id.wasm's hooks in Node against a fake Weft host, two instances sharing the
// host's state as pooled instances do. The component is transpiled with jco (installed by
// build.sh beside componentize-js) into a temp dir; nothing is written here.
//   node test.mjs OUT_DIR/request_id.wasm   (after ./build.sh OUT_DIR)
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const wasm = resolve(process.argv[2] ?? 'request_id.wasm');
const here = dirname(fileURLToPath(import.meta.url));
const tools = join(here, '../../../target/plugin-tools/js');
const out = mkdtempSync(join(tmpdir(), 'weft-js-test-'));
execFileSync(join(tools, 'node_modules/.bin/jco'),
  ['transpile', wasm, '-o', out, '--name', 'plugin', '--instantiation', 'async', '--quiet']);
const { instantiate } = await import(pathToFileURL(join(out, 'plugin.js')).href);
const getCoreModule = (p) => WebAssembly.compile(readFileSync(join(out, p)));

// The fake host: one call's request and response heads, shared state, logs.
const enc = new TextEncoder();
const dec = new TextDecoder();
let req = new Map();
let resp = new Map();
const state = new Map();
const logs = [];
let rand = 0x0123456789abcdefn;
let stateFull = false;
// Functions a test does not expect the plugin to call throw.
const only = (fns) => new Proxy(fns, {
  get: (t, k) => t[k] ?? (() => { throw new Error(`unexpected host call ${String(k)}`); }),
});
const imports = {
  'weft:filter/types': {},
  'weft:filter/request': only({
    header: (n) => req.get(n),
    setHeader: (n, v) => { req.set(n, v); },
  }),
  'weft:filter/response': only({
    header: (n) => resp.get(n),
    setHeader: (n, v) => { resp.set(n, v); },
  }),
  'weft:filter/host': only({
    log: (level, msg) => logs.push(`${level}: ${msg}`),
    randomU64: () => (rand = (rand * 6364136223846793005n + 1442695040888963407n) & ((1n << 64n) - 1n)),
    stateGet: (k) => state.get(k),
    stateSet: (k, v, ifVersion, ttl) => {
      if (stateFull) throw { tag: 'full' };
      assert.ok(ttl > 0, 'a call key expires');
      state.set(k, { value: v, version: 1n });
      return 1n;
    },
    stateDelete: (k) => { state.delete(k); },
  }),
};
const a = (await instantiate(getCoreModule, imports)).filter;
const b = (await instantiate(getCoreModule, imports)).filter;
const str = (v) => (v === undefined ? undefined : dec.decode(v));
const call = (id, headers = {}) => {
  req = new Map(Object.entries(headers).map(([k, v]) => [k, enc.encode(v)]));
  resp = new Map();
};
let passed = 0;
const test = (name, fn) => { fn(); passed++; console.log(`ok - ${name}`); };

test('hooks and defaults', () => {
  assert.deepEqual(a.configure('{}'), { onRequest: true, onAttemptEnd: false, onResponse: true, onDone: false });
  call(1n);
  a.onRequest(1n);
  assert.match(str(req.get('x-correlation-id')), /^[0-9a-f]{32}$/);
  b.onResponse(1n); // another instance: pooled
  assert.equal(str(resp.get('x-correlation-id')), str(req.get('x-correlation-id')));
  assert.equal(state.size, 0, 'the key is gone after on-response');
});

test('prefix and header, configured', () => {
  a.configure('{"header": "X-Request-Id", "prefix": "orders-"}');
  b.configure('{"header": "x-request-id", "prefix": "orders-"}');
  call(2n);
  a.onRequest(2n);
  assert.match(str(req.get('x-request-id')), /^orders-[0-9a-f]{32}$/);
  b.onResponse(2n);
  assert.equal(str(resp.get('x-request-id')), str(req.get('x-request-id')));
});

test('an id the caller sent is kept and echoed', () => {
  call(3n, { 'x-request-id': 'caller-42' });
  a.onRequest(3n);
  assert.equal(str(req.get('x-request-id')), 'caller-42');
  b.onResponse(3n);
  assert.equal(str(resp.get('x-request-id')), 'caller-42');
});

test('ids differ between calls', () => {
  call(4n); a.onRequest(4n); const one = str(req.get('x-request-id'));
  call(5n); a.onRequest(5n); const two = str(req.get('x-request-id'));
  assert.notEqual(one, two);
  state.clear();
});

test('no kept id: on-response leaves the response alone', () => {
  call(6n);
  b.onResponse(6n);
  assert.equal(resp.size, 0);
});

test('state full: the request keeps its id, a warning is logged', () => {
  stateFull = true;
  call(7n); a.onRequest(7n);
  stateFull = false;
  assert.match(str(req.get('x-request-id')), /^orders-/);
  assert.match(logs.at(-1), /^warn: cannot keep x-request-id/);
});

test('bad configs name the field', () => {
  for (const [config, want] of [
    ['nope', /^config: not JSON/],
    ['[]', /^config: expected a JSON object/],
    ['{"header": 5}', /^header: expected a string/],
    ['{"header": "a b"}', /^header: .* not a valid HTTP header name/],
    ['{"prefix": true}', /^prefix: expected a string/],
    ['{"prefix": "a\\nb"}', /^prefix: at most/],
    ['{"hedaer": "x"}', /^hedaer: unknown field/],
  ]) {
    assert.throws(() => a.configure(config), (e) => want.test(e.payload), config);
  }
});

rmSync(out, { recursive: true, force: true });
console.log(`${passed} passed, 0 failed`);
