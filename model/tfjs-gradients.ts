/**
 * Registers every gradient of tfjs-core. The package's node build (CommonJS) ships no gradient
 * registrations, and its ESM build cannot be imported by Node (extension-less directory
 * imports), so the ESM gradient modules are bundled once with esbuild into a CommonJS file
 * under node_modules/.cache and loaded from there. The bundle shares tfjs's engine and
 * registries through tfjs's global namespace.
 */
import { createRequire } from 'node:module';
import { existsSync, mkdirSync, renameSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
let done = false;

export function registerAllGradients(): void {
  if (done) return;
  const corePkg = require.resolve('@tensorflow/tfjs-core/package.json');
  const version = (require(corePkg) as { version: string }).version;
  const root = join(dirname(fileURLToPath(import.meta.url)), '..');
  const out = join(root, 'node_modules', '.cache', 'rlhf-chat', `tfjs-gradients-${version}.cjs`);
  if (!existsSync(out)) {
    const esbuild = require('esbuild') as typeof import('esbuild');
    mkdirSync(dirname(out), { recursive: true });
    const tmp = `${out}.${process.pid}.tmp`;
    esbuild.buildSync({
      stdin: { contents: "import '@tensorflow/tfjs-core/dist/register_all_gradients.js';", resolveDir: root },
      bundle: true,
      platform: 'node',
      format: 'cjs',
      outfile: tmp,
      logLevel: 'error',
    });
    renameSync(tmp, out);
  }
  require(out);
  done = true;
}
