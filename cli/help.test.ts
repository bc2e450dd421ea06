import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, runScript } from './test-support.ts';

const scripts = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts;
/** Tooling, not commands of the project: the test runner, the type checker, the native build. */
const TOOLING = new Set(['test', 'typecheck', 'postinstall']);

const run = (file: string, args: string[]) => runScript(file, args, { env: { ...process.env, DEBUG: '' } });

/** Runs `f` over `items`, `width` at a time. */
async function pool<T, R>(items: readonly T[], width: number, f: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await f(items[i]!);
    }
  }));
  return out;
}

test('every command of package.json answers --help: exit 0, usage and its options in --kebab-case, the store as --database everywhere', { timeout: 240_000 }, async (t) => {
  const commands = Object.entries(scripts).filter(([name]) => !TOOLING.has(name));
  assert.ok(commands.length >= 15, `only ${commands.length} commands found`);
  const results = await pool(commands, 2, async ([name, line]) => {
    const file = /^node --import tsx (\S+\.ts)$/.exec(line)?.[1];
    assert.ok(file, `script "${name}" is not "node --import tsx <file>.ts": ${line}`);
    return { name, ...(await run(file, ['--help'])) };
  });
  const storeLines: string[] = [];
  for (const r of results) {
    assert.equal(r.code, 0, `npm run ${r.name} -- --help exited ${r.code}:\n${r.stderr}`);
    assert.match(r.stdout, /usage/i, `npm run ${r.name} -- --help printed no usage:\n${r.stdout}`);
    assert.match(r.stdout, /^ {2}--[a-z]/m, `npm run ${r.name} -- --help lists no option:\n${r.stdout}`);
    const flags = [...r.stdout.matchAll(/^ {2}(--\S+)/gm)].map((m) => m[1]!);
    for (const f of flags) assert.match(f, /^--[a-z0-9]+(-[a-z0-9]+)*$/, `npm run ${r.name}: ${f} is not kebab-case`);
    assert.ok(!flags.includes('--url') || r.name === 'chat' || r.name === 'simulate', `npm run ${r.name}: the store is --database, not --url`);
    for (const m of r.stdout.matchAll(/^ {2}--database +\S+ +(.*)$/gm)) storeLines.push(m[1]!.replace(/; unset: not read$/, ''));
  }
  assert.ok(storeLines.length >= 7, `the store option appears in ${storeLines.length} commands`);
  assert.equal(new Set(storeLines).size, 1, `--database means different things:\n${[...new Set(storeLines)].join('\n')}`);
  t.diagnostic(`--help of ${results.length} commands: ${results.map((r) => `${r.name} ${r.ms} ms`).join(', ')}`);
});

test('a bad flag is one error line and exit status 2; a camelCase flag is told its kebab-case spelling', async () => {
  const bad = await run('training/build-tokenizer.ts', ['--vocab-size', 'lots']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /^error \[invalid_config\]: --vocab-size: .*\(--help lists the options\)\n$/);
  const camel = await run('training/build-tokenizer.ts', ['--vocabSize', '300']);
  assert.equal(camel.code, 2);
  assert.match(camel.stderr, /options are written in kebab-case: --vocab-size, not --vocabSize/);
});

test('no command reads --json (or any flag) straight off process.argv', () => {
  const offenders: string[] = [];
  for (const dir of ['bench', 'client', 'feedback', 'model', 'server', 'sim', 'training', 'cli']) {
    for (const f of readdirSync(join(ROOT, dir))) {
      if (!f.endsWith('.ts') || f.endsWith('.test.ts')) continue;
      const src = readFileSync(join(ROOT, dir, f), 'utf8');
      if (/process\.argv\.(includes|indexOf)\(/.test(src)) offenders.push(`${dir}/${f}`);
    }
  }
  assert.deepEqual(offenders, []);
});
