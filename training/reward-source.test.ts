import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { RemoteRewardSource, RewardError, RewardModelSource, RuleRewardSource, type RewardItem } from './reward-source.ts';
import { scoreExchanges } from './reward-model.ts';
import { toyConfig, toyTokenizer } from './rlhf-fixture.ts';

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
  const rm = GPT.create(toyConfig(tok), 'reward', 1);
  const viaSource = await new RewardModelSource(rm, tok).score(items);
  assert.deepEqual(viaSource, scoreExchanges(rm, tok, items.map((i) => ({ prompt: i.prompt, reply: i.reply }))));
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
