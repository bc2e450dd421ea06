import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { loadCheckpoint, saveCheckpoint } from '../model/checkpoint.ts';
import { RewardConfig, rewardModel } from './reward-model.ts';
import { PpoConfig, ppo } from './ppo.ts';
import { DpoConfig, dpo } from './dpo.ts';
import { toyConfig, toyPreferenceGroups, toyTokenizer } from './rlhf-fixture.ts';

let tok: Tokenizer;
let root: string;
before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
  tok = toyTokenizer();
  root = mkdtempSync(join(tmpdir(), 'rlhf-cli-'));
  const sft = GPT.create(toyConfig(tok), 'policy', 31);
  saveCheckpoint(join(root, 'sft'), {
    weights: await sft.exportWeights(),
    meta: { stage: 'sft', kind: 'policy', config: sft.config, tokenizerFingerprint: tok.fingerprint(), parent: null, step: 1, metrics: {}, runConfig: {} },
    tokenizer: tok.toJSON(),
  });
  sft.dispose();
  const rows = toyPreferenceGroups(24, 5).map((g) => JSON.stringify({ prompt: g.prompt, chosen: [{ role: 'assistant', content: g.replies[0] }], rejected: [{ role: 'assistant', content: g.replies[1] }] }));
  rows.push(JSON.stringify({ prompt: [{ role: 'user', content: 'say a fruit' }], ranking: ['banana', 'apple pear', 'plum'] }));
  rows.push(JSON.stringify({ prompt: [{ role: 'user', content: 'say a fruit' }], completion: [{ role: 'assistant', content: 'banana' }], label: true }));
  writeFileSync(join(root, 'prefs.jsonl'), rows.join('\n') + '\n');
  writeFileSync(join(root, 'prompts.jsonl'), [{ prompt: 'say a fruit' }, { messages: [{ role: 'user', content: 'one fruit please' }, { role: 'assistant', content: 'kiwi' }, { role: 'user', content: 'another' }] }].map((r) => JSON.stringify(r)).join('\n') + '\n');
});

test('reward model → PPO from the command-line entry points, and DPO instead, write verified checkpoints with their metrics', async () => {
  const lines: string[] = [];
  const log = (l: string) => lines.push(l);
  const rmCfg = RewardConfig.parse({ data: join(root, 'prefs.jsonl'), init: join(root, 'sft'), out: join(root, 'reward'), epochs: 1, lr: 1e-3, normSamples: 4, normMaxTokens: 4, backend: 'wasm' });
  const rm = await rewardModel(rmCfg, log);
  const rmCk = loadCheckpoint(join(root, 'reward'), { kind: 'reward' });
  assert.equal(rmCk.meta.stage, 'reward');
  assert.equal(rmCk.meta.metrics.scoreOffset, rm.scoreOffset);
  for (const key of ['heldOutAccuracy', 'heldOutEce', 'heldOutLoss']) assert.ok(Number.isFinite(rmCk.meta.metrics[key]), key);
  await assert.rejects(rewardModel(rmCfg, log), /already exists/);

  const ppoCfg = PpoConfig.parse({ policy: join(root, 'sft'), reference: join(root, 'sft'), reward: join(root, 'reward'), prompts: join(root, 'prompts.jsonl'), out: join(root, 'policy'), steps: 2, batchSize: 4, minibatchSize: 2, epochs: 1, maxTokens: 4, emaDecay: 0.5, backend: 'wasm' });
  const { history } = await ppo(ppoCfg, log);
  assert.equal(history.length, 2);
  const pCk = loadCheckpoint(join(root, 'policy'), { kind: 'policy' });
  assert.equal(pCk.meta.stage, 'policy');
  assert.equal(pCk.meta.parent, join(root, 'sft'));
  assert.ok(Number.isFinite(pCk.meta.metrics.kl) && Number.isFinite(pCk.meta.metrics.score));
  assert.equal(pCk.meta.runConfig.emaDecay, 0.5);
  assert.ok(lines.some((l) => /^ppo step 2\/2: score .* kl .* clipfrac .* vf .* entropy .* len .* approx-kl\/epoch \[/.test(l)), lines.join('\n'));
  assert.ok(lines.some((l) => l.startsWith('ppo: 3 prompts')), 'a {messages} row gives one prompt per user turn');

  const dpoCfg = DpoConfig.parse({ data: join(root, 'prefs.jsonl'), policy: join(root, 'sft'), reference: join(root, 'sft'), out: join(root, 'dpo'), lr: 1e-3, backend: 'wasm' });
  await dpo(dpoCfg, log);
  const dCk = loadCheckpoint(join(root, 'dpo'), { kind: 'policy' });
  assert.equal(dCk.meta.stage, 'policy');
  assert.equal(dCk.meta.runConfig.algorithm, 'dpo');
  assert.ok(Number.isFinite(dCk.meta.metrics.heldOutMargin));
});
