/**
 * Test fixture (run as a child process by `kill.test.ts`): writes checkpoints of about 8 MB into
 * `<argv[2]>/ck-<n>` without end, moving the `latest` pointer after each, and prints `saved <n>`
 * once a checkpoint and its pointer are written.
 */
import { join } from 'node:path';
import { saveCheckpoint, writeFileAtomic } from '../model/checkpoint.ts';
import { Tokenizer } from '../model/tokenizer.ts';

const root = process.argv[2];
if (!root) throw new Error('usage: kill-checkpoint-fixture.ts <dir>');
const tok = Tokenizer.train('the cat sat on the mat. the dog sat on the log. '.repeat(20), { vocabSize: 280 });
const config = { nLayer: 1, nHead: 2, nEmbd: 16, blockSize: 64, vocabSize: tok.vocabSize };
const data = new Float32Array(2 * 1024 * 1024).map((_, i) => Math.sin(i));
for (let n = 0; ; n++) {
  data[0] = n; // each checkpoint has its own hash; the loop spends its time writing
  const weights = new Map([['w', { data, shape: [2048, 1024] }]]);
  saveCheckpoint(join(root, `ck-${n}`), { weights, meta: { stage: 'sft', kind: 'policy', config, tokenizerFingerprint: tok.fingerprint(), parent: null, step: n, metrics: {}, runConfig: {} }, tokenizer: tok.toJSON() });
  writeFileAtomic(join(root, 'latest'), `ck-${n}\n`);
  process.stdout.write(`saved ${n}\n`);
}
