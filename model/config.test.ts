import { test } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import { ConfigError, describeConfig, parseConfig } from './config.ts';

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
  assert.throws(() => parseConfig(Schema, { argv: ['--steps', 'many'] }), /steps/);
  assert.throws(() => parseConfig(Schema, { argv: ['--steps', '-1'] }), /steps/);
});

test('--help text names every option in kebab-case and survives knobs without a default', () => {
  const S = z.object({ minNewJudgements: z.number().default(50).describe('judgements to wait for'), rewardUrl: z.string().optional().describe('remote scorer') });
  const help = describeConfig(S);
  assert.match(help, /--min-new-judgements\s+50\s+judgements to wait for/);
  assert.match(help, /--reward-url\s+\(none\)\s+remote scorer/);
  assert.throws(() => parseConfig(S, { argv: ['--minNew', '1'] }), /unknown option --min-new; known: --min-new-judgements --reward-url/);
  assert.equal(parseConfig(S, { argv: ['--min-new-judgements', '3'] }).minNewJudgements, 3);
});
