// Builds the native kernels addon (native/build/Release/native_kernels.node) with node-gyp.
// Run at install time; it never fails the install: when a compiler, node-gyp or Node's headers
// are missing, or the build fails, it prints one line saying native kernels are off and exits 0
// (the wasm backend then runs its own kernels). TF_NATIVE_KERNELS=0 skips the build.
// `--strict` makes a failed build exit 1 (for tests that need the addon).
import { spawnSync } from 'node:child_process';
import { existsSync, realpathSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const strict = process.argv.includes('--strict');

function off(reason, detail) {
  console.log(`native kernels: off (${reason}); the wasm backend uses its own kernels`);
  if (detail) console.error(detail.trim().split('\n').slice(-15).join('\n'));
  process.exit(strict ? 1 : 0);
}

function findNodeGyp() {
  const candidates = [];
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  const prefix = resolve(dirname(process.execPath), '..');
  candidates.push(join(prefix, 'lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js'));
  const which = spawnSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' });
  if (which.status === 0 && which.stdout.trim()) {
    const npmBin = realpathSync(which.stdout.trim());
    candidates.push(resolve(dirname(npmBin), '../node_modules/node-gyp/bin/node-gyp.js'));
  }
  return candidates.find((c) => existsSync(c));
}

function main() {
  if (process.env.TF_NATIVE_KERNELS === '0') off('TF_NATIVE_KERNELS=0');
  const cxx = process.env.CXX || 'g++';
  if (spawnSync(cxx, ['--version'], { stdio: 'ignore' }).status !== 0) off(`no C++ compiler (${cxx})`);
  const nodeGyp = findNodeGyp();
  if (!nodeGyp) off('node-gyp not found');
  const args = [nodeGyp, 'rebuild', '--release'];
  // Build against the headers of the running Node when they are installed beside it, so no
  // download is needed.
  const prefix = resolve(dirname(process.execPath), '..');
  if (existsSync(join(prefix, 'include/node/node_api.h'))) args.push(`--nodedir=${prefix}`);
  const started = Date.now();
  const run = spawnSync(process.execPath, args, { cwd: here, encoding: 'utf8', timeout: 300_000 });
  if (run.error) off(`node-gyp did not run: ${run.error.message}`);
  if (run.status !== 0) off('build failed', `${run.stdout}\n${run.stderr}`);
  const built = join(here, 'build/Release/native_kernels.node');
  if (!existsSync(built)) off('build produced no addon');
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  console.log(`native kernels: built ${built} in ${seconds} s`);
}

main();
