import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync, readdirSync, truncateSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from './backend.ts';
import { GPT } from './gpt.ts';
import { Tokenizer } from './tokenizer.ts';
import { CheckpointError, decodeSafetensors, encodeSafetensors, loadCheckpoint, saveCheckpoint } from './checkpoint.ts';

const cfg = { nLayer: 1, nHead: 2, nEmbd: 16, blockSize: 16, vocabSize: 270 };
let tok: Tokenizer;

before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
  tok = Tokenizer.train('the cat sat on the mat. the dog sat on the log.', { vocabSize: 270 });
});

async function save(dir: string, gpt: GPT) {
  return saveCheckpoint(dir, {
    weights: await gpt.exportWeights(),
    meta: { stage: 'sft', kind: 'policy', config: gpt.config, tokenizerFingerprint: tok.fingerprint(), parent: null, step: 3, metrics: { loss: 1.5 }, runConfig: { lr: 1e-3 } },
    tokenizer: tok.toJSON(),
  });
}

test('safetensors round-trip keeps names, shapes and values, with an 8-byte aligned header', () => {
  const tensors = new Map([['a', { data: new Float32Array([1, 2, 3, 4, 5, 6]), shape: [2, 3] }], ['b', { data: new Float32Array([7]), shape: [1] }]]);
  const buf = encodeSafetensors(tensors, { format: 'pt' });
  assert.equal(Number(buf.readBigUInt64LE(0)) % 8, 0);
  const back = decodeSafetensors(buf);
  assert.deepEqual([...back.tensors.keys()], ['a', 'b']);
  assert.deepEqual(back.tensors.get('a')!.shape, [2, 3]);
  assert.deepEqual([...back.tensors.get('a')!.data], [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(back.metadata, { format: 'pt' });
});

test('a saved checkpoint loads back into an identical model', async () => {
  const root = mkdtempSync(join(tmpdir(), 'ckpt-'));
  const gpt = GPT.create(cfg, 'policy', 3);
  const meta = await save(join(root, 'a'), gpt);
  assert.match(meta.sha256, /^[0-9a-f]{64}$/);
  const ck = loadCheckpoint(join(root, 'a'), { config: cfg, kind: 'policy', tokenizerFingerprint: tok.fingerprint() });
  const copy = GPT.fromWeights(ck.meta.config, ck.meta.kind, ck.weights);
  for (const [name, p] of gpt.params) assert.deepEqual(copy.params.get(name)!.dataSync(), p.dataSync(), name);
  assert.deepEqual(readdirSync(root), ['a'], 'no temporary directories left behind');
  assert.equal(Tokenizer.fromJSON(ck.tokenizer).fingerprint(), tok.fingerprint());
  gpt.dispose();
  copy.dispose();
});

test('corrupt, truncated and mismatched checkpoints are refused with a stable code', async () => {
  const root = mkdtempSync(join(tmpdir(), 'ckpt-'));
  const gpt = GPT.create(cfg, 'policy', 3);
  await save(join(root, 'ok'), gpt);
  const code = (dir: string, expect = {}) => {
    try {
      loadCheckpoint(dir, expect);
      return 'loaded';
    } catch (e) {
      assert.ok(e instanceof CheckpointError, String(e));
      return e.code;
    }
  };
  assert.equal(code(join(root, 'missing')), 'checkpoint_missing');
  assert.equal(code(join(root, 'ok'), { config: { ...cfg, nEmbd: 32 } }), 'config_mismatch');
  assert.equal(code(join(root, 'ok'), { kind: 'reward' }), 'kind_mismatch');
  assert.equal(code(join(root, 'ok'), { tokenizerFingerprint: 'f'.repeat(64) }), 'tokenizer_mismatch');

  await save(join(root, 'flipped'), gpt);
  const f = join(root, 'flipped', 'model.safetensors');
  const bytes = readFileSync(f);
  bytes[bytes.length - 5]! ^= 0xff;
  writeFileSync(f, bytes);
  assert.equal(code(join(root, 'flipped')), 'checkpoint_corrupt');

  await save(join(root, 'short'), gpt);
  const s = join(root, 'short', 'model.safetensors');
  truncateSync(s, Math.floor(statSync(s).size / 2));
  assert.equal(code(join(root, 'short')), 'checkpoint_corrupt');

  await save(join(root, 'badmeta'), gpt);
  writeFileSync(join(root, 'badmeta', 'meta.json'), '{"format": ');
  assert.equal(code(join(root, 'badmeta')), 'checkpoint_corrupt');
  gpt.dispose();
});

test('saving over an existing checkpoint is refused and leaves it intact', async () => {
  const root = mkdtempSync(join(tmpdir(), 'ckpt-'));
  const a = GPT.create(cfg, 'policy', 3);
  const b = GPT.create(cfg, 'policy', 4);
  const first = await save(join(root, 'x'), a);
  await assert.rejects(save(join(root, 'x'), b), (e: unknown) => e instanceof CheckpointError && e.code === 'checkpoint_exists');
  assert.equal(loadCheckpoint(join(root, 'x')).meta.sha256, first.sha256);
  assert.deepEqual(readdirSync(root), ['x']);
  a.dispose();
  b.dispose();
});
