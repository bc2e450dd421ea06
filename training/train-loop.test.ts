import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { renderRows, rowsToBatch, streamBatchAt, streamEvalBatches } from './datasets.ts';
import { trainLoop, type TrainLoopOptions } from './train-loop.ts';

let tok: Tokenizer;
let stream: Int32Array;
const cfg = { nLayer: 1, nHead: 2, nEmbd: 16, blockSize: 16, vocabSize: 0 };

before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
  const text = 'the cat sat on the mat and the dog sat on the log. '.repeat(30);
  tok = Tokenizer.train(text, { vocabSize: 280 });
  cfg.vocabSize = tok.vocabSize;
  stream = Int32Array.from(tok.encode(text));
});

function options(runDir: string, extra: Partial<TrainLoopOptions> = {}): TrainLoopOptions {
  return {
    stage: 'base', runDir, tokenizer: tok, init: () => GPT.create(cfg, 'policy', 9), config: cfg, parent: null,
    steps: 6, lr: 1e-2, minLr: 1e-3, warmup: 2, weightDecay: 0.1, gradClip: 1, evalEvery: 3, saveEvery: 100, resume: true,
    batchAt: streamBatchAt(stream, 4, 16, 1), evalBatches: streamEvalBatches(stream, 4, 16, 2), runConfig: {}, log: () => {},
    ...extra,
  };
}

test('a run stopped midway and resumed ends with exactly the weights of an uninterrupted run', async () => {
  const root = mkdtempSync(join(tmpdir(), 'train-'));
  const whole = await trainLoop(options(join(root, 'whole')));
  let steps = 0;
  const first = await trainLoop(options(join(root, 'split'), { shouldStop: () => ++steps >= 3 }));
  assert.equal(first.interrupted, true);
  assert.equal(first.step, 3);
  first.gpt.dispose();
  const second = await trainLoop(options(join(root, 'split')));
  assert.equal(second.interrupted, false);
  for (const [name, p] of whole.gpt.params) {
    assert.deepEqual(second.gpt.params.get(name)!.dataSync(), p.dataSync(), `parameter ${name} differs after resume`);
  }
  assert.ok(whole.evalLoss < whole.history[0]!.trainLoss, 'held-out loss falls during training');
  assert.deepEqual(readdirSync(join(root, 'split')).sort(), ['latest', 'step-000006'], 'old checkpoints pruned, no temporaries');
  whole.gpt.dispose();
  second.gpt.dispose();
});

test('SFT batches weight assistant tokens only, and padding not at all', () => {
  const rows = renderRows(tok, [
    { messages: [{ role: 'user', content: 'the cat' }, { role: 'assistant', content: 'sat on the mat' }] },
    { messages: [{ role: 'user', content: 'dog' }, { role: 'assistant', content: 'log' }] },
  ], 64);
  const b = rowsToBatch(rows, tok.specialId('<|pad|>'));
  const asst = tok.encode('sat on the mat').length + 1; // content + end of turn
  const row0 = [...b.weights.subarray(0, b.T)].reduce((a, c) => a + c, 0);
  const row1 = [...b.weights.subarray(b.T, 2 * b.T)].reduce((a, c) => a + c, 0);
  assert.equal(row0, asst);
  assert.equal(row1, tok.encode('log').length + 1);
  // The weighted targets are exactly the assistant's tokens and its end-of-turn.
  const targets0 = [...b.targets.subarray(0, b.T)].filter((_, t) => b.weights[t] === 1);
  assert.deepEqual(targets0, [...tok.encode('sat on the mat'), tok.specialId('<|end|>')]);
});
