import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { saveCheckpoint } from '../model/checkpoint.ts';
import { getModelVersion, listPromotions, openTempStore, resolveAlias, type FeedbackStore } from '../feedback/index.ts';
import { registerPipelineVersions } from './register-versions.ts';

let store: FeedbackStore;
before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
  store = await openTempStore();
});
after(() => store.close());

test('the pipeline registers base and SFT with stage, parent and sha256, and points sft and champion at SFT once', async () => {
  const root = mkdtempSync(join(tmpdir(), 'reg-'));
  const tok = Tokenizer.train('a small text to train on, a small text. '.repeat(10), { vocabSize: 270 });
  const cfg = { nLayer: 1, nHead: 2, nEmbd: 16, blockSize: 16, vocabSize: tok.vocabSize };
  for (const [stage, seed] of [['base', 1], ['sft', 2]] as const) {
    const gpt = GPT.create(cfg, 'policy', seed);
    saveCheckpoint(join(root, stage), { weights: await gpt.exportWeights(), meta: { stage, kind: 'policy', config: cfg, tokenizerFingerprint: tok.fingerprint(), parent: null, step: 1, metrics: { loss: seed }, runConfig: {} }, tokenizer: tok.toJSON() });
    gpt.dispose();
  }
  const ids = await registerPipelineVersions(store, { base: join(root, 'base'), sft: join(root, 'sft') });
  const base = await getModelVersion(store.db, ids.base);
  const sft = await getModelVersion(store.db, ids.sft);
  assert.equal(base?.stage, 'base');
  assert.equal(sft?.stage, 'sft');
  assert.equal(sft?.parent_id, ids.base);
  assert.match(sft?.sha256 ?? '', /^[0-9a-f]{64}$/);
  assert.equal(await resolveAlias(store.db, 'sft'), ids.sft);
  assert.equal(await resolveAlias(store.db, 'champion'), ids.sft);
  const moves = (await listPromotions(store.db, {})).length;
  await registerPipelineVersions(store, { base: join(root, 'base'), sft: join(root, 'sft') });
  assert.equal((await listPromotions(store.db, {})).length, moves, 'running it again moves nothing');
});
