import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { RemoteRewardSource, RewardError, RewardModelSource, RuleRewardSource, type RewardItem } from './reward-source.ts';
import { scoreExchanges, scoreRows } from './reward-model.ts';
import { EnsembleRewardSource, rewardEnsemble } from './reward-ensemble.ts';
import { encodeExchange } from './rlhf-common.ts';
import { endOfTurnId } from '../model/chat-template.ts';
import { toyConfig, toyTokenizer } from './rlhf-fixture.ts';

/** A reward model whose scores differ between replies (a zero head would score everything 0). */
function scoringModel(seed: number): GPT {
  const rm = GPT.create(toyConfig(tok), 'reward', seed);
  tf.tidy(() => rm.params.get('score.w')!.assign(tf.randomNormal([32, 1], 0, 1, 'float32', seed)));
  return rm;
}

let tok: Tokenizer;
let server: Server;
let base: string;
let mode = 'ok';

before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
  tok = toyTokenizer();
  for (const it of items) it.replyIds = tok.encode(it.reply);
  server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const items = (JSON.parse(body) as { items: { reply: string }[] }).items;
      if (mode === 'slow') return void setTimeout(() => res.end('{}'), 500);
      if (mode === '500') return void res.writeHead(500).end('scorer broke');
      if (mode === 'short') return void res.end(JSON.stringify({ scores: [1] }));
      if (mode === 'nan') return void res.end(JSON.stringify({ scores: items.map(() => 'x') }));
      res.end(JSON.stringify({ scores: items.map((it) => it.reply.length) }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/score`;
});
after(() => server.close());

const items: RewardItem[] = [
  { prompt: [{ role: 'user', content: 'say a fruit' }], reply: 'apple', replyIds: [] },
  { prompt: [{ role: 'user', content: 'say a fruit' }], reply: 'banana pear', replyIds: [] },
];

test('a rule, a reward model and a remote scorer all score the same batch through one interface', async () => {
  const rule = new RuleRewardSource('length', (it) => it.reply.length);
  assert.deepEqual(await rule.score(items), [5, 11]);
  const remote = new RemoteRewardSource(base, { timeoutMs: 2000 });
  mode = 'ok';
  assert.deepEqual(await remote.score(items), [5, 11]);
  const rm = scoringModel(1);
  const viaSource = await new RewardModelSource(rm, tok).score(items);
  assert.ok(Math.abs(viaSource[0]! - viaSource[1]!) > 1e-3, `the two replies must score apart for the comparison to mean anything: ${viaSource}`);
  assert.deepEqual(viaSource, scoreExchanges(rm, tok, items.map((i) => ({ prompt: i.prompt, reply: i.reply }))));
  rm.dispose();
});

test('a non-canonical id sequence of a text scores the same as its canonical encoding (the text is scored, not the ids)', async () => {
  const rm = scoringModel(2);
  const prompt = [{ role: 'user' as const, content: 'say a fruit' }];
  const text = ' banana apple';
  const canonical = [...tok.encode(text), endOfTurnId(tok)];
  const bytewise = [...Buffer.from(text, 'utf8'), endOfTurnId(tok)]; // one id per byte: same text, other ids
  assert.notDeepEqual(bytewise, canonical);
  assert.equal(tok.decode(bytewise), text);
  const pad = tok.specialId('<|pad|>');
  const raw = tf.tidy(() => scoreRows(rm, [canonical, bytewise].map((r) => encodeExchange(tok, prompt, r, rm.config.blockSize).ids), pad).arraySync());
  assert.ok(Math.abs(raw[0]! - raw[1]!) > 1e-4, `the model itself scores the two id sequences apart (${raw}), so equal scores below are the canonicalisation`);
  const item = (replyIds: number[]): RewardItem => ({ prompt, reply: tok.decode(replyIds), replyIds });
  const [a, b] = await new RewardModelSource(rm, tok).score([item(canonical), item(bytewise)]);
  assert.equal(a, b);
  assert.ok(Math.abs(a! - raw[0]!) < 1e-5, 'the score is the canonical one');
  const [c, d] = scoreExchanges(rm, tok, [{ prompt, reply: canonical }, { prompt, reply: bytewise }]);
  assert.equal(c, d, 'scoreExchanges (and so normalisation) re-encodes ids too');
  const ens = new EnsembleRewardSource(rewardEnsemble([rm]), tok, { pessimism: 1 });
  const [e, f] = await ens.score([item(canonical), item(bytewise)]);
  assert.equal(e, f);
  rm.dispose();
});

test('remote scorer failures come back as typed errors with stable codes', async () => {
  const remote = new RemoteRewardSource(base, { timeoutMs: 150 });
  const expectCode = async (m: string, code: string) => {
    mode = m;
    await assert.rejects(remote.score(items), (e: unknown) => e instanceof RewardError && e.code === code);
  };
  await expectCode('slow', 'reward_timeout');
  await expectCode('500', 'reward_http');
  await expectCode('short', 'reward_bad_response');
  await expectCode('nan', 'reward_not_finite');
  await assert.rejects(new RemoteRewardSource('http://127.0.0.1:1/x').score(items), (e: unknown) => e instanceof RewardError && e.code === 'reward_unreachable');
  assert.throws(() => new RemoteRewardSource('ftp://x'), /http/);
});

test('a rule returning NaN stops the step with reward_not_finite; a policy model is refused as a reward model', async () => {
  await assert.rejects(new RuleRewardSource('bad', () => NaN).score(items), (e: unknown) => e instanceof RewardError && e.code === 'reward_not_finite');
  const policy = GPT.create(toyConfig(tok), 'policy', 1);
  assert.throws(() => new RewardModelSource(policy, tok), /needs a reward model/);
  policy.dispose();
});
