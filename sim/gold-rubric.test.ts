import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GoldRewardSource, GoldRubric, NoisyJudge, Rng, readDefinitionPrompts, sigmoid } from './gold-rubric.ts';
import { buildData, BuildDataConfig } from '../training/build-data.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const LUCID = { prompt: 'What does lucid mean?', word: 'lucid', gloss: 'transparently clear; easily understandable' };

test('the rubric rewards the format, the gloss, brevity and a clean end', () => {
  const r = new GoldRubric([LUCID]);
  const good = r.breakdown('What does lucid mean?', '"lucid" means transparently clear, easily understandable.', true);
  assert.equal(good.format, 1);
  assert.equal(good.overlap, 2);
  assert.equal(good.length, 0);
  assert.equal(good.empty, 0);
  assert.equal(good.clean, 0.5);
  assert.equal(good.total, 3.5);
  const wrongFormat = r.score('What does lucid mean?', 'It is clear.', true);
  assert.ok(wrongFormat < good.total);
  assert.equal(r.breakdown('What does lucid mean?', '"lucid" means clear.', true).overlap, 0.5);
  const long = r.breakdown('What does lucid mean?', `"lucid" means ${'very '.repeat(60)}clear`, false);
  assert.ok(long.length < -5, `length penalty ${long.length}`);
  // Brevity: each word beyond 6 costs 0.1.
  const seven = r.breakdown('What does lucid mean?', '"lucid" means clear and easy to see.', true);
  assert.ok(Math.abs(seven.length + 0.1) < 1e-9, `seven words: ${seven.length}`);
  // A reply that names the word and stops has no definition.
  const bare = r.breakdown('What does lucid mean?', '"lucid" means.', true);
  assert.deepEqual([bare.format, bare.empty, bare.total], [1, -0.5, 1]);
  assert.equal(long.clean, 0);
  assert.ok(r.score('What does lucid mean?', '"lucid" means clear.', true) > r.score('What does lucid mean?', '"lucid" means clear.', false));
  // Near misses of the word get partial format credit, far ones less.
  const near = r.breakdown('What does lucid mean?', '"lucia" means clear.', true).format;
  const far = r.breakdown('What does lucid mean?', '"sack" means clear.', true).format;
  assert.ok(near > far && near < 1 && far === 0, `${near} ${far}`);
  // Unknown prompts: no format or gloss credit.
  assert.equal(r.score('Hello?', '"lucid" means clear.', true), 0.5);
});

test('the exploitable rubric pays for rambling; the honest one charges for it', () => {
  const honest = new GoldRubric([LUCID]);
  const loose = new GoldRubric([LUCID], { exploitable: true });
  const short = '"lucid" means clear.';
  const ramble = `"lucid" means ${'and so on '.repeat(8)}clear`;
  assert.ok(loose.score(LUCID.prompt, ramble, false) > loose.score(LUCID.prompt, short, true) + 1);
  assert.ok(honest.score(LUCID.prompt, ramble, false) < honest.score(LUCID.prompt, short, true) - 2);
  // The loophole is the only difference.
  const b = loose.breakdown(LUCID.prompt, ramble, false);
  assert.ok(Math.abs(b.total - b.loophole - honest.score(LUCID.prompt, ramble, false)) < 1e-9);
  assert.equal(honest.breakdown(LUCID.prompt, ramble, false).loophole, 0);
});

test('reads word, gloss and prompt from a dialogue file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'gold-'));
  const f = join(dir, 'd.jsonl');
  writeFileSync(f, [
    JSON.stringify({ kind: 'wordnet', meta: { word: 'coarse' }, messages: [{ role: 'user', content: 'What is the definition of "coarse"?' }, { role: 'assistant', content: '"coarse" means rough to the touch.' }] }),
    JSON.stringify({ kind: 'factbook', meta: {}, messages: [{ role: 'user', content: 'Capital of France?' }, { role: 'assistant', content: 'Paris.' }] }),
  ].join('\n'));
  assert.deepEqual(readDefinitionPrompts(f), [{ prompt: 'What is the definition of "coarse"?', word: 'coarse', gloss: 'rough to the touch' }]);
});

test('the gold reward source scores items by their last user turn and end token', async () => {
  const src = new GoldRewardSource(new GoldRubric([LUCID]), 99);
  const prompt = [{ role: 'user' as const, content: LUCID.prompt }];
  const [a, b] = await src.score([
    { prompt, reply: '"lucid" means clear.', replyIds: [1, 2, 99] },
    { prompt, reply: '"lucid" means clear.', replyIds: [1, 2, 3] },
  ]);
  assert.equal(a! - b!, 0.5);
});

test('the seeded generator is deterministic', () => {
  const a = new Rng(5), b = new Rng(5), c = new Rng(6);
  const xs = Array.from({ length: 5 }, () => a.next());
  assert.deepEqual(xs, Array.from({ length: 5 }, () => b.next()));
  assert.notDeepEqual(xs, Array.from({ length: 5 }, () => c.next()));
  assert.ok(xs.every((x) => x >= 0 && x < 1));
});

test('the noisy judge prefers the better reply with the Bradley–Terry probability', () => {
  const judge = new NoisyJudge(new Rng(11), 0.5);
  assert.equal(judge.compare(1, 1.01), 'tie');
  for (const [ga, gb] of [[2, 1.5], [1, 1.1], [0.5, 2]] as const) {
    const n = 20_000;
    let wins = 0;
    for (let i = 0; i < n; i++) if (judge.compare(ga, gb) === 'a') wins++;
    const p = sigmoid((ga - gb) / 0.5);
    assert.ok(Math.abs(wins / n - p) < 0.015, `P(a) ${wins / n} vs ${p}`);
  }
  // Same seed, same judgements.
  const j1 = new NoisyJudge(new Rng(3)), j2 = new NoisyJudge(new Rng(3));
  assert.deepEqual(Array.from({ length: 50 }, () => j1.compare(1, 1.2)), Array.from({ length: 50 }, () => j2.compare(1, 1.2)));
});

test('rankings have Bradley–Terry pairwise marginals; thumbs follow the threshold', () => {
  const judge = new NoisyJudge(new Rng(4), 0.5, 1.5);
  const n = 20_000;
  let first0 = 0, zeroOverOne = 0;
  for (let i = 0; i < n; i++) {
    const order = judge.rank([2, 1.5, 0]);
    assert.deepEqual([...order].sort(), [0, 1, 2]);
    if (order[0] === 0) first0++;
    if (order.indexOf(0) < order.indexOf(1)) zeroOverOne++;
  }
  assert.ok(Math.abs(zeroOverOne / n - sigmoid(1)) < 0.015, `pairwise ${zeroOverOne / n}`);
  const e = [4, 3, 0].map(Math.exp);
  assert.ok(Math.abs(first0 / n - e[0]! / (e[0]! + e[1]! + e[2]!)) < 0.015);
  let ups = 0;
  for (let i = 0; i < n; i++) if (judge.thumb(2.5) === 'up') ups++;
  assert.ok(Math.abs(ups / n - sigmoid(2)) < 0.015);
});

test('rankDistinct ranks one reply per distinguishable gold level; all alike is not rankable', () => {
  const judge = new NoisyJudge(new Rng(8), 0.3);
  assert.deepEqual(judge.rankDistinct([1, 1, 1.01]), []);
  for (let i = 0; i < 200; i++) {
    const order = judge.rankDistinct([0.5, 1.5, 0.5, 1.5]);
    assert.deepEqual([...order].sort(), [0, 1]);
  }
  let best = 0;
  for (let i = 0; i < 2000; i++) if (judge.rankDistinct([0.5, 0.5, 1.5])[0] === 2) best++;
  assert.ok(Math.abs(best / 2000 - sigmoid(1 / 0.3)) < 0.03, `${best / 2000}`);
});

const IMPORTS_CLIENT_OR_SIM = /(from|import)\s*\(?\s*['"][^'"]*\b(client|sim)\//;

test('the loop and the rest of training never import the client nor the simulation (nor the rubric)', () => {
  const offenders: string[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      if (statSync(p).isDirectory()) walk(p);
      else if (name.endsWith('.ts')) {
        const src = readFileSync(p, 'utf8');
        if (IMPORTS_CLIENT_OR_SIM.test(src) || /gold-rubric|sim-users|simulate\.ts/.test(src)) offenders.push(p);
      }
    }
  };
  for (const d of ['training', 'feedback', 'model']) walk(join(ROOT, d));
  assert.deepEqual(offenders, []);
  // The check can fail: it sees an import of the client or the simulation when there is one.
  assert.ok(IMPORTS_CLIENT_OR_SIM.test(`import { x } from '../client/ws-client.ts';`));
  assert.ok(IMPORTS_CLIENT_OR_SIM.test(`const m = await import('../sim/gold-rubric.ts');`));
  assert.ok(!IMPORTS_CLIENT_OR_SIM.test(`import { x } from './similar.ts';`));
});

test('the held-out dialogues built by build-data hold definition prompts the rubric can score', () => {
  const out = mkdtempSync(join(tmpdir(), 'rubric-data-'));
  buildData(BuildDataConfig.parse({ out, trainDialogues: 200, valDialogues: 150, maxDocsPerSource: 2 }), { log: () => {} });
  const val = readDefinitionPrompts(join(out, 'dialogues.val.jsonl'));
  assert.ok(val.length >= 60, `${val.length} held-out definition prompts`);
  assert.ok(val.every((p) => p.gloss.length > 0 && p.prompt.length > 0));
  rmSync(out, { recursive: true, force: true });
});

