import { test } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import { ConfigError, describeConfig, parseArgv, parseConfig } from './config.ts';

const Schema = z.object({
  steps: z.number().int().positive().default(100).describe('optimizer steps'),
  lr: z.number().default(3e-4).describe('learning rate'),
  resume: z.boolean().default(true).describe('resume from the last checkpoint'),
  out: z.string().default('runs/x').describe('output directory'),
});

test('defaults are used and the result is frozen', () => {
  const cfg = parseConfig(Schema, {});
  assert.deepEqual(cfg, { steps: 100, lr: 3e-4, resume: true, out: 'runs/x' });
  assert.ok(Object.isFrozen(cfg));
});

test('command line beats environment beats defaults', () => {
  const cfg = parseConfig(Schema, {
    env: { T_STEPS: '7', T_LR: '0.1' },
    envPrefix: 'T',
    argv: ['--steps', '9', '--no-resume', '--out=runs/y'],
  });
  assert.deepEqual(cfg, { steps: 9, lr: 0.1, resume: false, out: 'runs/y' });
});

test('unknown keys and wrong types are rejected with a clear error', () => {
  assert.throws(() => parseConfig(Schema, { argv: ['--stepz', '3'] }), (e: unknown) => e instanceof ConfigError && /unknown option --stepz/.test(e.message));
  assert.throws(() => parseConfig(Schema, { argv: ['--steps', 'many'] }), /^ConfigError: --steps: .*expected number/);
  assert.throws(() => parseConfig(Schema, { argv: ['--steps', '-1'] }), /--steps: /);
  assert.throws(() => parseConfig(Schema, { argv: ['runs/z'] }), /unexpected argument "runs\/z"/);
});

test('--help text names every option in kebab-case and survives knobs without a default', () => {
  const S = z.object({ minNewJudgements: z.number().default(50).describe('judgements to wait for'), rewardUrl: z.string().optional().describe('remote scorer') });
  const help = describeConfig(S);
  assert.match(help, /--min-new-judgements\s+50\s+judgements to wait for/);
  assert.match(help, /--reward-url\s+\(none\)\s+remote scorer/);
  assert.throws(() => parseConfig(S, { argv: ['--min-new', '1'] }), /unknown option --min-new; known: --min-new-judgements --reward-url/);
  assert.equal(parseConfig(S, { argv: ['--min-new-judgements', '3'] }).minNewJudgements, 3);
});

test('a secret is refused on the command line and taken from the environment; a URL only when it carries a password', () => {
  const S = z.object({ token: z.string().optional(), db: z.string().default('default') });
  const secrets = { token: { when: 'always', env: 'T_TOKEN' }, db: { when: 'password', env: 'T_DB' } } as const;
  assert.throws(() => parseConfig(S, { argv: ['--token', 'abcdefghijklmnopq'], secrets }), /--token holds a secret: set it in the environment \(T_TOKEN\)/);
  assert.throws(() => parseConfig(S, { argv: ['--db', 'postgres://u:hunter2@127.0.0.1/x'], secrets }), /--db holds a secret.*T_DB/);
  assert.equal(parseConfig(S, { argv: ['--db', 'postgres://u@127.0.0.1/x'], secrets }).db, 'postgres://u@127.0.0.1/x');
  assert.equal(parseConfig(S, { argv: ['--db', 'default'], secrets }).db, 'default');
  const fromEnv = parseConfig(S, { env: { T_TOKEN: 'abcdefghijklmnopq', T_DB: 'postgres://u:hunter2@127.0.0.1/x' }, envPrefix: 'T', secrets });
  assert.deepEqual([fromEnv.token, fromEnv.db], ['abcdefghijklmnopq', 'postgres://u:hunter2@127.0.0.1/x']);
});

test('flags are kebab-case only: a camelCase or snake_case flag is refused with its kebab-case spelling', () => {
  assert.throws(() => parseArgv(['--minNewJudgements', '3']), (e: unknown) => e instanceof ConfigError && /options are written in kebab-case: --min-new-judgements, not --minNewJudgements/.test(e.message));
  assert.throws(() => parseArgv(['--out_dir=x']), /--out-dir, not --out_dir/);
  assert.deepEqual([...parseArgv(['--out-dir=x', '--no-resume', '--json']).flags], [['outDir', 'x'], ['resume', false], ['json', true]]);
});

test('environment: PREFIX_UPPER_SNAKE, or bare UPPER_SNAKE with the empty prefix; an empty variable is unset', () => {
  const S = z.object({ maxBatch: z.number().int().default(8), modelDir: z.string().default('m') });
  assert.deepEqual({ ...parseConfig(S, { env: { SRV_MAX_BATCH: '4', MAX_BATCH: '99' }, envPrefix: 'SRV' }) }, { maxBatch: 4, modelDir: 'm' });
  assert.deepEqual({ ...parseConfig(S, { env: { MAX_BATCH: '16', MODEL_DIR: '' }, envPrefix: '' }) }, { maxBatch: 16, modelDir: 'm' });
});

test('an enum names its choices; positional arguments pass only when the command takes them', () => {
  const S = z.object({ kind: z.enum(['sft', 'preference']).default('sft'), out: z.string().default('o') });
  assert.throws(() => parseConfig(S, { argv: ['--kind', 'x'] }), /--kind must be one of sft, preference, got "x"/);
  assert.equal(parseConfig(S, { argv: ['a.json', '--out', 'p.png', 'b.json'], positionals: true }).out, 'p.png');
  assert.deepEqual(parseArgv(['a.json', '--out', 'p.png', 'b.json']).positional, ['a.json', 'b.json']);
});

test('--help text never crashes: required, optional, enum and object defaults each get a column', () => {
  const S = z.object({ need: z.string(), maybe: z.number().optional(), kind: z.enum(['a', 'b']).default('b'), list: z.array(z.string()).default([]) });
  const help = describeConfig(S);
  assert.match(help, /--need\s+\(required\)/);
  assert.match(help, /--maybe\s+\(none\)/);
  assert.match(help, /--kind\s+"b"/);
  assert.match(help, /--list\s+\[\]/);
});
