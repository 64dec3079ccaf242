// Componentizes request_id.js against Weft's contract. Run by build.sh:
//   node componentize.mjs TOOLS_DIR WIT_DIR OUT_FILE
// TOOLS_DIR holds node_modules (componentize-js is imported from there by path, as ESM does
// not search NODE_PATH); nothing is written but OUT_FILE (and componentize-js's temp dir).
import { writeFile, mkdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const args = process.argv.slice(2);
if (args.length !== 3) {
  console.error('usage: node componentize.mjs TOOLS_DIR WIT_DIR OUT_FILE');
  process.exit(2);
}
const [toolsDir, witDir, outFile] = args.map((a) => resolve(a));
const here = dirname(fileURLToPath(import.meta.url));
// componentize-js strips the working directory from the source path by string prefix and
// maps what is left into the engine's sandbox: run from `/` (or from a folder whose path is a
// string prefix of the source's, `/tmp/fre` for `/tmp/fresh/…`), the engine cannot find it
// (`Error loading module "mp/…"`). Working from the source's own folder gives the engine that
// folder alone.
process.chdir(here);
const entry = join(toolsDir, 'node_modules/@bytecodealliance/componentize-js/src/componentize.js');
const { componentize } = await import(pathToFileURL(entry).href);

// componentize-js reads the WIT inside a WASI sandbox (its splicer is a component run on
// preview2-shim). preview2-shim 0.26 preopens nothing by default (0.25 preopened `/`), so a
// `witPath` fails with "No such file or directory" (likely also why `jco componentize --wit`
// fails). Preopen the WIT folder alone, at its own path. This is the same module instance
// the splicer imports: the same file, so the same URL.
const shim = join(toolsDir, 'node_modules/@bytecodealliance/preview2-shim/dist/nodejs/filesystem.js');
const { _setPreopens } = await import(pathToFileURL(shim).href);
_setPreopens({ [witDir]: witDir });

const { component } = await componentize({
  sourcePath: join(here, 'request_id.js'),
  witPath: witDir,
  worldName: 'plugin',
  // Every WASI feature off: a "pure" component importing weft:filter only. Left on, `http`
  // and `fetch-event` import wasi:http, and `stdio` brings wasi:filesystem/types (through the
  // preview1 adapter) which Weft's host does not link, so the plugin would not load. The
  // plugin needs none of them: it logs through host.log and draws randomness from
  // host.random-u64. The cost: an uncaught JS exception traps with no message (the host then
  // applies the fail strategy), so the hooks catch what can fail; and console.* is a no-op.
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await mkdir(dirname(outFile), { recursive: true });
await writeFile(outFile, component);
