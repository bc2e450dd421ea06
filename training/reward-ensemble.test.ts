import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { saveCheckpoint } from '../model/checkpoint.ts';
import { EnsembleRewardSource, evaluateEnsemble, loadRewardEnsemble, memberScores, recencyWeights, rewardEnsemble, saveRewardEnsemble, splitByContext, promptText, trainRewardEnsemble, type RewardEnsemble } from './reward-ensemble.ts';
import { scoreExchanges } from './reward-model.ts';
import type { PreferenceData, PreferenceGroup } from './preferences.ts';
import type { RewardItem } from './reward-source.ts';
import { toyConfig, toyPreferenceGroups, toyTokenizer } from './rlhf-fixture.ts';
import { createRng } from '../model/random.ts';
import { replyWords } from '../feedback/reply-words.ts';
import { referenceLikelihood } from './reward-covariates.ts';

let tok: Tokenizer;
before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
  tok = toyTokenizer();
});

/** Toy pairs (the reply with "banana" wins), each about its own context so the hash split has many to cut. */
function toyData(n: number, seed: number, t0 = Date.parse('2026-11-01T00:00:00Z')): PreferenceData {
  const groups = toyPreferenceGroups(n, seed).map((g, i) => ({ ...g, prompt: [{ role: 'user' as const, content: `${g.prompt[0]!.content} ${seed}.${i}` }], createdAt: new Date(t0 + i * 1000).toISOString() }));
  return { groups, unpaired: [] };
}

function randomHeads(K: number, seed: number): RewardEnsemble {
  return rewardEnsemble(
    Array.from({ length: K }, (_, j) => {
      const rm = GPT.create(toyConfig(tok), 'reward', seed + j);
      tf.tidy(() => rm.params.get('score.w')!.assign(tf.randomNormal([32, 1], 0, 1, 'float32', seed + j)));
      return rm;
    }),
  );
}

const items: RewardItem[] = ['banana', 'apple pear', 'kiwi banana fig'].map((reply) => ({ prompt: [{ role: 'user' as const, content: 'say a fruit' }], reply, replyIds: [] }));
const fast = { epochs: 4, lr: 3e-3, patience: 0, unpairedCoef: 0, seed: 1 };

test('three bootstrapped members learn the preference; the fixed eval split, per-member accuracies and their disagreement are reported', () => {
  const sft = GPT.create(toyConfig(tok), 'policy', 4);
  const data = toyData(160, 5);
  const n0 = tf.memory().numTensors;
  const r = trainRewardEnsemble({ sft, tok, data, cfg: { ...fast, members: 3 }, log: () => {} });
  assert.equal(r.ensemble.members.length, 3);
  assert.equal(r.perMember.length, 3);
  const evalGroups = data.groups.filter((g) => splitByContext(promptText(g.prompt)) === 'eval');
  assert.equal(r.evalSet.pairs, evalGroups.length, 'evalSet is exactly the groups the caller can pick out with splitByContext');
  assert.equal(r.splits.train + r.splits.val + r.splits.eval, 160);
  assert.ok(r.evalSet.accuracy > 0.85, `eval accuracy ${r.evalSet.accuracy}`);
  assert.ok(r.heldOut.pairs > 0 && r.heldOut.loss < Math.log(2), `val loss ${r.heldOut.loss}`);
  assert.ok(r.perMember.every((m) => m.accuracy > 0.7), JSON.stringify(r.perMember));
  assert.ok(r.meanStd > 1e-3, `members disagree somewhat (bootstrap + seeds): mean std ${r.meanStd}`);
  const s = memberScores(r.ensemble, tok, items);
  assert.notDeepEqual(s[0], s[1]);
  assert.equal(r.steps > 0, true);
  r.ensemble.dispose();
  assert.equal(tf.memory().numTensors, n0, 'no tensors leak');
  sft.dispose();
});

test('member k warm-starts from the previous round\'s member k', () => {
  const sft = GPT.create(toyConfig(tok), 'policy', 4);
  const previous = randomHeads(3, 40);
  const before = memberScores(previous, tok, items);
  const r = trainRewardEnsemble({ sft, previous, tok, data: toyData(24, 6), cfg: { ...fast, members: 3, epochs: 1, lr: 1e-9 }, log: () => {} });
  const after = memberScores(r.ensemble, tok, items);
  after.forEach((row, k) => row.forEach((x, i) => assert.ok(Math.abs(x - before[k]![i]!) < 1e-3, `member ${k} reply ${i}: ${x} vs previous ${before[k]![i]}`)));
  assert.ok(Math.abs(after[0]![0]! - after[1]![0]!) > 1e-3, 'and the members stay distinct');
  assert.deepEqual(memberScores(previous, tok, items), before, 'the previous ensemble is left as it was');
  r.ensemble.dispose();
  previous.dispose();
  sft.dispose();
});

test('recency: weight 0.5^(age/halfLife), age counted in judgements from the newest; 0 turns it off', () => {
  const t = (s: number) => new Date(Date.UTC(2026, 10, 1, 0, 0, s)).toISOString();
  const w = recencyWeights([t(1), t(3), t(2), t(3), undefined], 2);
  assert.deepEqual(w, [0.5 ** (3 / 2), 1, 0.5 ** (2 / 2), 1, 1]);
  assert.deepEqual(recencyWeights([t(1), t(2)], 0), [1, 1]);
});

test('recency weighting lets recent judgements win over older contradicting ones', () => {
  const sft = GPT.create(toyConfig(tok), 'policy', 4);
  const old = toyData(64, 7, Date.parse('2026-10-01T00:00:00Z')).groups.map((g) => ({ ...g, pairs: [[1, 0]] as [number, number][] })); // old taste: no banana
  const recent = toyData(64, 8, Date.parse('2026-11-01T00:00:00Z')).groups; // new taste: banana
  const probe = toyPreferenceGroups(40, 123); // banana preferred
  const acc = (halfLife: number) => {
    const r = trainRewardEnsemble({ sft, tok, data: { groups: [...old, ...recent], unpaired: [] }, cfg: { ...fast, members: 1, epochs: 3, recencyHalfLife: halfLife }, log: () => {} });
    const a = evaluateEnsemble(r.ensemble, tok, probe).ensemble.accuracy;
    r.ensemble.dispose();
    return a;
  };
  const weighted = acc(16);
  const flat = acc(0);
  assert.ok(weighted > 0.8, `with a 16-judgement half-life the recent taste wins: ${weighted}`);
  assert.ok(flat < weighted - 0.2, `without recency the two tastes fight: ${flat} vs ${weighted}`);
  sft.dispose();
});

test('ties pull tied replies together', () => {
  const sft = GPT.create(toyConfig(tok), 'policy', 4);
  const pairs = toyData(64, 9).groups;
  // Ties between a banana reply and a plain one: with enough weight they cancel the preference.
  const ties: PreferenceGroup[] = toyData(64, 10).groups.map((g) => ({ ...g, pairs: [], ties: [[0, 1]], source: 'tie' }));
  const gap = (tieWeight: number) => {
    const r = trainRewardEnsemble({ sft, tok, data: { groups: [...pairs, ...ties], unpaired: [] }, cfg: { ...fast, members: 1, epochs: 3, tieWeight }, log: () => {} });
    const probe = toyPreferenceGroups(30, 321);
    const s = scoreExchanges(r.ensemble.members[0]!, tok, probe.flatMap((g) => g.replies.map((reply) => ({ prompt: g.prompt, reply }))));
    r.ensemble.dispose();
    let d = 0;
    for (let i = 0; i < s.length; i += 2) d += Math.abs(s[i]! - s[i + 1]!);
    return d / (s.length / 2);
  };
  const without = gap(0);
  const withTies = gap(3);
  assert.ok(withTies < 0.6 * without, `mean |Δ| with ties ${withTies} vs without ${without}`);
  sft.dispose();
});

test('the ensemble source gives mean − k·std, and its spread', async () => {
  const e = randomHeads(3, 20);
  const s = memberScores(e, tok, items);
  const mean = items.map((_, i) => (s[0]![i]! + s[1]![i]! + s[2]![i]!) / 3);
  const std = items.map((_, i) => Math.sqrt(s.reduce((a, row) => a + (row[i]! - mean[i]!) ** 2, 0) / 3));
  assert.ok(std.every((x) => x > 1e-3), 'members disagree');
  const spread = await new EnsembleRewardSource(e, tok, { pessimism: 1 }).scoreSpread(items);
  spread.forEach((x, i) => {
    assert.ok(Math.abs(x.mean - mean[i]!) < 1e-5);
    assert.ok(Math.abs(x.std - std[i]!) < 1e-5);
  });
  const pess = await new EnsembleRewardSource(e, tok, { pessimism: 2 }).score(items);
  pess.forEach((x, i) => assert.ok(Math.abs(x - (mean[i]! - 2 * std[i]!)) < 1e-5));
  const plain = await new EnsembleRewardSource(e, tok, { pessimism: 0 }).score(items);
  plain.forEach((x, i) => assert.ok(Math.abs(x - mean[i]!) < 1e-5));
  assert.throws(() => new EnsembleRewardSource(e, tok, { pessimism: -1 }), /pessimism/);
  e.dispose();
});

test('an ensemble saves as one verified checkpoint and loads back with the same scores; corruption is refused', () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'rm-ens-')), 'reward');
  const e = randomHeads(3, 30);
  const meta = saveRewardEnsemble(dir, e, { tokenizer: tok, parent: 'sft', step: 7, metrics: { evalAccuracy: 0.9 } });
  assert.equal(meta.metrics.members, 3);
  const { ensemble, meta: m2 } = loadRewardEnsemble(dir, tok);
  assert.equal(m2.sha256, meta.sha256);
  assert.deepEqual(memberScores(ensemble, tok, items), memberScores(e, tok, items));
  assert.throws(() => saveRewardEnsemble(dir, e, { tokenizer: tok, parent: null, step: 0 }), (err: Error & { code?: string }) => err.code === 'checkpoint_exists');
  const file = join(dir, 'model.safetensors');
  const buf = readFileSync(file);
  buf[buf.length - 1] ^= 0xff;
  writeFileSync(file, buf);
  assert.throws(() => loadRewardEnsemble(dir, tok), (err: Error & { code?: string }) => err.code === 'checkpoint_corrupt');
  // A plain reward checkpoint is an ensemble of one.
  const single = join(dir, '..', 'single');
  const w = new Map([...e.members[0]!.params].map(([k, p]) => [k, { data: p.dataSync() as Float32Array, shape: p.shape }]));
  saveCheckpoint(single, { weights: w, meta: { stage: 'reward', kind: 'reward', config: e.members[0]!.config, tokenizerFingerprint: tok.fingerprint(), parent: null, step: 0, metrics: {}, runConfig: {} }, tokenizer: tok.toJSON() });
  const one = loadRewardEnsemble(single, tok).ensemble;
  assert.equal(one.members.length, 1);
  assert.deepEqual(memberScores(one, tok, items)[0], memberScores(e, tok, items)[0]);
  one.dispose();
  ensemble.dispose();
  e.dispose();
});

test('the length covariate: λ fitted on the train judgements, members score head + λ·words, the heads leave length to λ, saved and loaded; lengthWeight w weighs it in the optimiser\'s reward', async () => {
  const sft = GPT.create(toyConfig(tok), 'policy', 4);
  // Users who prefer shorter replies, whatever their words: P(a ≻ b) = σ(−0.8·(ℓa − ℓb)).
  const rng = createRng(12);
  const fruit = ['apple', 'pear', 'kiwi', 'fig', 'banana'];
  const say = (n: number) => Array.from({ length: n }, () => rng.pick(fruit)).join(' ');
  const groups: PreferenceGroup[] = Array.from({ length: 240 }, (_, i) => {
    const [a, b] = [1 + rng.int(7), 1 + rng.int(7)];
    const aWins = rng() < 1 / (1 + Math.exp(0.8 * (a - b)));
    return { prompt: [{ role: 'user' as const, content: `say a fruit ${i}` }], replies: [say(a), say(b)], pairs: [aWins ? [0, 1] : [1, 0]], weight: 1, source: 'toy' };
  });
  const probe = Array.from({ length: 40 }, (_, i) => ({ prompt: [{ role: 'user' as const, content: 'say a fruit' }], reply: say(1 + (i % 7)) }));
  const lengths = probe.map((p) => replyWords(p.reply));
  const headCorr = (length: boolean) => {
    const r = trainRewardEnsemble({ sft, tok, data: { groups, unpaired: [] }, cfg: { ...fast, members: 2, epochs: 3, covariates: length ? ['length'] : [] }, log: () => {} });
    const lambda = r.covariates.length ?? 0;
    const heads = r.ensemble.members.map((m) => scoreExchanges(m, tok, probe));
    const full = memberScores(r.ensemble, tok, probe);
    full.forEach((row, j) => row.forEach((x, i) => assert.ok(Math.abs(x - (heads[j]![i]! + lambda * lengths[i]!)) < 1e-5, 'member score = head + λ·words')));
    const c = correlation(heads[0]!, lengths);
    return { r, c, lambda };
  };
  const off = headCorr(false);
  assert.deepEqual(off.r.covariates, {});
  assert.ok(off.c < -0.6, `without the term the head learns length: corr ${off.c}`);
  off.r.ensemble.dispose();
  const on = headCorr(true);
  assert.ok(on.lambda < -0.3, `λ says shorter is better: ${on.lambda}`);
  assert.ok(Math.abs(on.c) < Math.abs(off.c) / 2, `with the term the heads leave length to λ: corr ${on.c} vs ${off.c}`);
  assert.ok(on.r.evalSet.accuracy > 0.7, `the whole score still predicts the users: ${on.r.evalSet.accuracy}`);
  const items = probe.map((p) => ({ ...p, replyIds: [] }));
  const whole = await new EnsembleRewardSource(on.r.ensemble, tok, { pessimism: 0 }).score(items);
  const headsOnly = await new EnsembleRewardSource(on.r.ensemble, tok, { pessimism: 0, lengthWeight: 0 }).score(items);
  const half = await new EnsembleRewardSource(on.r.ensemble, tok, { pessimism: 0, lengthWeight: 0.5 }).score(items);
  items.forEach((_, i) => {
    assert.ok(Math.abs(whole[i]! - headsOnly[i]! - on.lambda * lengths[i]!) < 1e-5);
    assert.ok(Math.abs(half[i]! - headsOnly[i]! - 0.5 * on.lambda * lengths[i]!) < 1e-5);
  });
  assert.throws(() => new EnsembleRewardSource(on.r.ensemble, tok, { pessimism: 0, lengthWeight: -1 }), /lengthWeight/);
  const dir = join(mkdtempSync(join(tmpdir(), 'rm-len-')), 'reward');
  saveRewardEnsemble(dir, on.r.ensemble, { tokenizer: tok, parent: 'sft', step: 1 });
  const back = loadRewardEnsemble(dir, tok).ensemble;
  assert.deepEqual(back.covariates, on.r.covariates);
  assert.deepEqual(memberScores(back, tok, probe), memberScores(on.r.ensemble, tok, probe));
  back.dispose();
  on.r.ensemble.dispose();
  sft.dispose();
});

function correlation(x: readonly number[], y: readonly number[]): number {
  const mx = x.reduce((a, b) => a + b, 0) / x.length;
  const my = y.reduce((a, b) => a + b, 0) / y.length;
  let sxy = 0, sxx = 0, syy = 0;
  x.forEach((v, i) => ((sxy += (v - mx) * (y[i]! - my)), (sxx += (v - mx) ** 2), (syy += (y[i]! - my) ** 2)));
  return sxy / Math.sqrt(sxx * syy);
}

test('the likelihood covariate: users who prefer what the reference finds likely get λ > 0; scores add λ·likelihood; loading needs the reference', () => {
  const sft = GPT.create(toyConfig(tok), 'policy', 4);
  const rng = createRng(13);
  const fruit = ['apple', 'pear', 'kiwi', 'fig', 'banana'];
  const pool = Array.from({ length: 60 }, () => Array.from({ length: 2 }, () => rng.pick(fruit)).join(' '));
  const prompt = [{ role: 'user' as const, content: 'say a fruit' }];
  // Users pick the reply the reference finds likelier (under their own prompt), with noise: 3 log-odds per std of the likelihood.
  const pairs = Array.from({ length: 200 }, (_, i) => ({ prompt: [{ role: 'user' as const, content: `say a fruit ${i}` }], replies: [pool[rng.int(pool.length)]!, pool[rng.int(pool.length)]!] })).filter((g) => g.replies[0] !== g.replies[1]);
  const like = referenceLikelihood(sft, tok, pairs.flatMap((g) => g.replies.map((reply) => ({ prompt: g.prompt, reply }))));
  const diffs = pairs.map((_, i) => like[2 * i]! - like[2 * i + 1]!);
  const sd = Math.sqrt(diffs.reduce((a, d) => a + d * d, 0) / diffs.length);
  const groups: PreferenceGroup[] = pairs.map((g, i) => {
    const aWins = rng() < 1 / (1 + Math.exp((-3 * diffs[i]!) / sd));
    return { ...g, pairs: [aWins ? [0, 1] : [1, 0]] as [number, number][], weight: 1, source: 'toy' };
  });
  const r = trainRewardEnsemble({ sft, tok, data: { groups, unpaired: [] }, cfg: { ...fast, members: 1, epochs: 1, lr: 1e-9, covariates: ['length', 'likelihood'] }, log: () => {} });
  assert.ok(Math.abs((r.covariates.likelihood ?? 0) - 3 / sd) < 1.5 / sd, `λ_likelihood (true ${3 / sd}) ${JSON.stringify(r.covariates)}`);
  assert.equal(r.ensemble.reference, sft);
  const probe = pool.slice(0, 8).map((reply) => ({ prompt, reply }));
  const heads = scoreExchanges(r.ensemble.members[0]!, tok, probe);
  const full = memberScores(r.ensemble, tok, probe)[0]!;
  const pl = referenceLikelihood(sft, tok, probe);
  full.forEach((x, i) => assert.ok(Math.abs(x - heads[i]! - r.covariates.length! * replyWords(probe[i]!.reply) - r.covariates.likelihood! * pl[i]!) < 1e-4));
  const dir = join(mkdtempSync(join(tmpdir(), 'rm-like-')), 'reward');
  saveRewardEnsemble(dir, r.ensemble, { tokenizer: tok, parent: 'sft', step: 1 });
  assert.throws(() => loadRewardEnsemble(dir, tok), (err: Error & { code?: string }) => err.code === 'checkpoint_corrupt' && /reference/.test(err.message));
  const back = loadRewardEnsemble(dir, tok, sft).ensemble;
  assert.deepEqual(memberScores(back, tok, probe), memberScores(r.ensemble, tok, probe));
  assert.throws(() => rewardEnsemble(back.members, { likelihood: 1 }), /reference policy/);
  back.dispose();
  r.ensemble.dispose();
  sft.dispose();
});

test('the echo covariate: users who want the asked word named get λ > 0; its IDF statistics are saved with the ensemble and required to load it', () => {
  const sft = GPT.create(toyConfig(tok), 'policy', 4);
  const rng = createRng(17);
  const fruit = ['apple', 'pear', 'kiwi', 'fig', 'banana'];
  // "say FRUIT please" about a fruit: users prefer the reply that names the asked fruit (3 log-odds).
  const groups: PreferenceGroup[] = Array.from({ length: 240 }, (_, i) => {
    const asked = fruit[i % fruit.length]!;
    const prompt = [{ role: 'user' as const, content: `say ${asked} please ${i}` }];
    const named = rng() < 0.5 ? 0 : 1;
    const other = fruit.filter((f) => f !== asked)[rng.int(4)]!;
    const replies = named === 0 ? [`${asked} fig`, `${other} fig`] : [`${other} fig`, `${asked} fig`];
    const winner = rng() < 1 / (1 + Math.exp(-3)) ? named : 1 - named;
    return { prompt, replies, pairs: [[winner, 1 - winner]] as [number, number][], weight: 1, source: 'toy' };
  });
  const r = trainRewardEnsemble({ sft, tok, data: { groups, unpaired: [] }, cfg: { ...fast, members: 1, epochs: 1, lr: 1e-9, covariates: ['length', 'echo'] }, log: () => {} });
  assert.ok(r.ensemble.questions && r.ensemble.questions.questions === 240, 'the statistics of the judged questions');
  assert.equal(r.ensemble.questions.df.say, 240);
  // "say" and "please" are in every question (idf 0), the counter is in one: naming the fruit is about half of the weight.
  assert.ok((r.covariates.echo ?? 0) > 3, `λ_echo ${JSON.stringify(r.covariates)}`);
  const probe = [{ prompt: [{ role: 'user' as const, content: 'say kiwi please' }], reply: 'kiwi fig' }, { prompt: [{ role: 'user' as const, content: 'say kiwi please' }], reply: 'pear fig' }];
  const [named, unnamed] = memberScores(r.ensemble, tok, probe)[0]!;
  assert.ok(named! > unnamed!, `naming the asked fruit scores higher: ${named} vs ${unnamed}`);
  const dir = join(mkdtempSync(join(tmpdir(), 'rm-echo-')), 'reward');
  saveRewardEnsemble(dir, r.ensemble, { tokenizer: tok, parent: 'sft', step: 1 });
  const back = loadRewardEnsemble(dir, tok).ensemble;
  assert.deepEqual(back.questions, r.ensemble.questions);
  assert.deepEqual(memberScores(back, tok, probe), memberScores(r.ensemble, tok, probe));
  back.dispose();
  const metaPath = join(dir, 'meta.json');
  const meta = JSON.parse(readFileSync(metaPath, 'utf8'));
  delete meta.runConfig.questionWords;
  writeFileSync(metaPath, JSON.stringify(meta));
  assert.throws(() => loadRewardEnsemble(dir, tok), (err: Error & { code?: string }) => err.code === 'checkpoint_corrupt' && /question-word/.test(err.message));
  assert.throws(() => rewardEnsemble(r.ensemble.members, { echo: 1 }), /question-word statistics/);
  r.ensemble.dispose();
  sft.dispose();
});

test("heads 'auto': the users' val judgements drop the heads when length alone explains them, and keep them when the words matter", () => {
  const sft = GPT.create(toyConfig(tok), 'policy', 4);
  const rng = createRng(21);
  const fruit = ['apple', 'pear', 'kiwi', 'fig'];
  const say = (n: number, banana: boolean) => {
    const words = Array.from({ length: n }, () => rng.pick(fruit));
    if (banana) words[rng.int(n)] = 'banana';
    return words.join(' ');
  };
  // Two kinds of users over the same replies: ones who only want shorter replies (σ(−1.2·Δwords)),
  // and ones who only want "banana" in it, whatever its length.
  const groupsFor = (byLength: boolean): PreferenceGroup[] =>
    Array.from({ length: 320 }, (_, i) => {
      const [la, lb] = [1 + rng.int(6), 1 + rng.int(6)];
      const banana = rng() < 0.5;
      const replies = [say(la, banana), say(lb, !banana)];
      const aWins = byLength ? rng() < 1 / (1 + Math.exp(1.2 * (la - lb))) : banana;
      return { prompt: [{ role: 'user' as const, content: `say a fruit ${byLength ? 'L' : 'B'} ${i}` }], replies, pairs: [aWins ? [0, 1] : [1, 0]], weight: 1, source: 'toy' };
    });
  const train = (groups: PreferenceGroup[], heads: 'on' | 'auto') =>
    trainRewardEnsemble({ sft, tok, data: { groups, unpaired: [] }, cfg: { ...fast, members: 2, epochs: 3, covariates: ['length'], heads }, log: () => {} });

  const lengthUsers = groupsFor(true);
  const dropped = train(lengthUsers, 'auto');
  assert.equal(dropped.heads, 'dropped');
  const scores = memberScores(dropped.ensemble, tok, items);
  const lambda = dropped.covariates.length!;
  scores.forEach((row) => row.forEach((x, i) => assert.ok(Math.abs(x - lambda * replyWords(items[i]!.reply)) < 1e-5, 'score = λ·words once the heads are dropped')));
  assert.equal(dropped.meanStd, 0, 'without heads the members agree exactly');
  dropped.ensemble.dispose();
  const on = train(lengthUsers, 'on');
  assert.equal(on.heads, 'kept', "'on' never drops them");
  on.ensemble.dispose();

  const bananaUsers = train(groupsFor(false), 'auto');
  assert.equal(bananaUsers.heads, 'kept', 'length says nothing about banana: the heads stay');
  assert.ok(bananaUsers.evalSet.accuracy > 0.8, `and they predict the users: ${bananaUsers.evalSet.accuracy}`);
  bananaUsers.ensemble.dispose();
  sft.dispose();
});
