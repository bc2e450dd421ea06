import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { createRng } from '../model/random.ts';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import { covariateFeatures, covariatesOf, echoOf, fitCovariateCoefs, idfOf, isQuestionWords, needsReference, questionWords, referenceLikelihood, referenceTokenLogProbs, tailOf, withoutQuestion } from './reward-covariates.ts';
import { replyLogProbs } from './ppo.ts';
import { encodeExchange } from './rlhf-common.ts';
import type { PreferenceGroup } from './preferences.ts';
import { toyConfig, toyTokenizer } from './rlhf-fixture.ts';

before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
});

const reply = (n: number) => Array.from({ length: n }, (_, i) => `w${i}`).join(' ');
const prompt = [{ role: 'user' as const, content: 'define it' }];
const lengthOf = (groups: readonly PreferenceGroup[]) => groups.map((g) => g.replies.map((r) => [r.split(' ').length]));

/** Pairs of replies of 2–14 words whose winner is drawn with P(a ≻ b) = σ(λ·(ℓa − ℓb)). */
function drawn(lambda: number, n: number, seed: number): PreferenceGroup[] {
  const rng = createRng(seed);
  return Array.from({ length: n }, () => {
    const [la, lb] = [2 + rng.int(13), 2 + rng.int(13)];
    const aWins = rng() < 1 / (1 + Math.exp(-lambda * (la - lb)));
    return { prompt, replies: [reply(la), reply(lb)], pairs: [aWins ? [0, 1] : [1, 0]] as [number, number][], weight: 1, source: 'comparison' };
  });
}

test('the Bradley–Terry fit on length alone recovers the users\' per-word log-odds, either sign', () => {
  for (const lambda of [-0.4, 0.25]) {
    const g = drawn(lambda, 4000, lambda > 0 ? 1 : 2);
    const [fit] = fitCovariateCoefs(g, lengthOf(g));
    assert.ok(Math.abs(fit! - lambda) < 0.05, `true λ ${lambda}, fitted ${fit}`);
  }
  const g = drawn(0, 4000, 3);
  const [none] = fitCovariateCoefs(g, lengthOf(g));
  assert.ok(Math.abs(none!) < 0.03, `users indifferent to length: ${none}`);
});

test('two covariates are fitted jointly: each λ recovered although the features are correlated', () => {
  const rng = createRng(9);
  const groups: PreferenceGroup[] = [];
  const features: number[][][] = [];
  for (let i = 0; i < 6000; i++) {
    const f = [0, 1].map(() => {
      const len = 2 + rng.int(13);
      return [len, 0.5 * len + 2 * (rng() - 0.5)]; // the second feature follows the first, plus its own part
    });
    const z = -0.3 * (f[0]![0]! - f[1]![0]!) + 1.5 * (f[0]![1]! - f[1]![1]!);
    const aWins = rng() < 1 / (1 + Math.exp(-z));
    groups.push({ prompt, replies: ['a', 'b'], pairs: [aWins ? [0, 1] : [1, 0]], weight: 1, source: 'comparison' });
    features.push(f);
  }
  const [l1, l2] = fitCovariateCoefs(groups, features);
  assert.ok(Math.abs(l1! + 0.3) < 0.08 && Math.abs(l2! - 1.5) < 0.15, `fitted ${l1}, ${l2} for −0.3, 1.5`);
  const [alone] = fitCovariateCoefs(groups, features.map((f) => f.map((x) => [x[0]!])));
  assert.ok(alone! > l1! + 0.3, `length alone soaks up the correlated feature's effect: ${alone} vs ${l1}`);
});

test('ties pull λ towards 0; weights and a zero omega count as the reward model counts them', () => {
  const shortWins: PreferenceGroup[] = Array.from({ length: 40 }, (_, i) => ({ prompt, replies: [reply(3), reply(3 + (i % 5) + 1)], pairs: [[0, 1]], weight: 1, source: 'comparison' }));
  const fit = (g: PreferenceGroup[], omega?: number[]) => fitCovariateCoefs(g, lengthOf(g), omega)[0]!;
  const base = fit([...shortWins, ...drawn(-0.3, 400, 4)]);
  assert.ok(base < -0.3, `short replies always win: ${base}`);
  const ties: PreferenceGroup[] = Array.from({ length: 400 }, (_, i) => ({ prompt, replies: [reply(4), reply(4 + (i % 6) + 1)], pairs: [], ties: [[0, 1]], weight: 1, source: 'tie' }));
  const all = [...shortWins, ...drawn(-0.3, 400, 4), ...ties];
  const withTies = fit(all);
  assert.ok(withTies > base / 2 && withTies < 0, `ties at different lengths say length does not matter: ${withTies} vs ${base}`);
  assert.ok(Math.abs(fit(all, all.map((g) => (g.source === 'tie' ? 0 : 1))) - base) < 1e-9, 'omega 0 leaves the ties out');
  const ranking: PreferenceGroup = { prompt, replies: [reply(2), reply(5), reply(9)], pairs: [[0, 1], [0, 2], [1, 2]], weight: 1 / 3, source: 'ranking' };
  assert.ok(fit([ranking, ...drawn(0, 200, 5)]) < 0, 'a ranking\'s pairs enter');
});

test('no pair, or no difference, gives 0; separable data a finite λ', () => {
  assert.deepEqual(fitCovariateCoefs([], []), []);
  const same: PreferenceGroup[] = Array.from({ length: 20 }, (_, i) => ({ prompt, replies: [reply(4), reply(4)], pairs: [i % 2 ? [0, 1] : [1, 0]], weight: 1, source: 'comparison' }));
  assert.deepEqual(fitCovariateCoefs(same, lengthOf(same)), [0]);
  const separable: PreferenceGroup[] = Array.from({ length: 20 }, () => ({ prompt, replies: [reply(3), reply(9)], pairs: [[0, 1]], weight: 1, source: 'comparison' }));
  const [l] = fitCovariateCoefs(separable, lengthOf(separable));
  assert.ok(Number.isFinite(l) && l! < -0.5, `separable: ${l}`);
});

test('the likelihood covariate is the mean log-probability per token of the canonical reply and its end under the reference', () => {
  const tok = toyTokenizer();
  const ref = GPT.create(toyConfig(tok), 'policy', 3);
  const items = [{ prompt: [{ role: 'user' as const, content: 'say a fruit' }], reply: 'banana' }, { prompt: [{ role: 'user' as const, content: 'say a fruit' }], reply: 'apple pear kiwi' }];
  const got = referenceLikelihood(ref, tok, items);
  items.forEach((it, i) => {
    const x = encodeExchange(tok, it.prompt, it.reply, ref.config.blockSize);
    const lp = replyLogProbs(ref, tok, [{ prompt: it.prompt, promptIds: x.ids.slice(0, x.replyStart), replyIds: x.ids.slice(x.replyStart), reply: it.reply, finishReason: 'stop' }], 1)[0]!;
    assert.ok(lp.length >= 2, 'the reply and its end token');
    assert.ok(Math.abs(got[i]! - lp.reduce((a, b) => a + b, 0) / lp.length) < 1e-5);
  });
  assert.notEqual(got[0], got[1]);
  assert.deepEqual(covariateFeatures(['length', 'likelihood'], items, { reference: ref, tok }), items.map((it, i) => [it.reply.split(' ').length, got[i]]));
  assert.throws(() => covariateFeatures(['likelihood'], items, { tok }), /reference policy/);
  ref.dispose();
});

test('the relevance covariate is the likelihood with the question minus the likelihood with the last user turn emptied (only that turn)', () => {
  const tok = toyTokenizer();
  const ref = GPT.create(toyConfig(tok), 'policy', 5);
  const prompt = [
    { role: 'system' as const, content: 'be brief' },
    { role: 'user' as const, content: 'say a fruit' },
    { role: 'assistant' as const, content: 'pear' },
    { role: 'user' as const, content: 'another fruit' },
  ];
  assert.deepEqual(withoutQuestion(prompt), [prompt[0], prompt[1], prompt[2], { role: 'user', content: '' }]);
  const items = [{ prompt, reply: 'banana' }, { prompt, reply: 'apple kiwi' }];
  const withQ = referenceLikelihood(ref, tok, items);
  const blind = referenceLikelihood(ref, tok, items.map((it) => ({ ...it, prompt: withoutQuestion(it.prompt) })));
  const f = covariateFeatures(['relevance', 'length', 'likelihood'], items, { reference: ref, tok });
  f.forEach((row, i) => {
    assert.ok(Math.abs(row[0]! - (withQ[i]! - blind[i]!)) < 1e-6, `relevance of ${items[i]!.reply}`);
    assert.ok(row[0] !== 0, 'the question changes the reference likelihood');
    assert.equal(row[1], items[i]!.reply.split(' ').length);
    assert.equal(row[2], withQ[i]);
  });
  assert.throws(() => covariateFeatures(['relevance'], items, { tok }), /reference policy/);
  assert.ok(needsReference({ relevance: 0.3 }) && !needsReference({ length: -0.2 }));
  assert.deepEqual(covariatesOf('length+likelihood+relevance'), ['length', 'likelihood', 'relevance']);
  assert.deepEqual(covariatesOf('none'), []);
  ref.dispose();
});

test('the tail covariate is the mean of the reply\'s ⌈20%⌉ least likely tokens under the reference', () => {
  assert.equal(tailOf([]), 0);
  assert.equal(tailOf([-1]), -1);
  assert.equal(tailOf([-0.1, -3, -0.2, -0.3, -0.4]), -3, '⌈0.2·5⌉ = 1 token: the least likely');
  assert.ok(Math.abs(tailOf([-0.1, -3, -0.2, -0.3, -0.4, -2]) - -2.5) < 1e-12, '⌈0.2·6⌉ = 2 tokens');
  const tok = toyTokenizer();
  const ref = GPT.create(toyConfig(tok), 'policy', 7);
  const items = [{ prompt: [{ role: 'user' as const, content: 'say a fruit' }], reply: 'banana apple kiwi pear fig' }];
  const lp = referenceTokenLogProbs(ref, tok, items)[0]!;
  const [[tail, likelihood]] = covariateFeatures(['tail', 'likelihood'], items, { reference: ref, tok });
  assert.equal(tail, tailOf(lp));
  assert.ok(tail! < likelihood!, 'the tail lies below the mean');
  ref.dispose();
});

test('the echo covariate weighs the question\'s words by IDF: a reply that names the asked word gets about all of it, parroting the question no more, a near miss nothing', () => {
  const ask = (content: string) => [{ role: 'user' as const, content: 'earlier question' }, { role: 'assistant' as const, content: 'earlier' }, { role: 'user' as const, content }];
  const words = ['relocate', 'coarse', 'deprecate', 'avid', 'jest', 'break into', 'ping'];
  const q = questionWords([...words.map((w) => ask(`What does ${w} mean?`)), ask('What does jest mean?')]);
  assert.equal(q.questions, words.length, 'each distinct conversation once');
  assert.deepEqual(q.df, { what: 7, does: 7, mean: 7 }, 'words of one question are not kept');
  assert.equal(idfOf(q, 'what'), 0, 'a word of every question weighs nothing');
  assert.ok(Math.abs(idfOf(q, 'relocate') - Math.log(8 / 2)) < 1e-12 && idfOf(q, 'unseen') === idfOf(q, 'relocate'), 'rare and unseen words weigh alike');
  const echo = (question: string, reply: string) => echoOf(ask(question), reply, q);
  assert.equal(echo('What does relocate mean?', '"relocate" means to move.'), 1);
  assert.equal(echo('What does relocate mean?', '"relocte" means to move.'), 0, 'a near miss repeats nothing');
  assert.equal(echo('What does relocate mean?', 'What does relocate mean? What does relocate mean?'), 1, 'parroting scores no more than naming');
  assert.equal(echo('What does break into mean?', '"break" means to enter'), 0.5, 'a two-word phrase: one of two rare words');
  assert.ok(Math.abs(echo('Who found relocate', 'relocate') - 1 / 3) < 1e-12, '"who", "found": unseen, as rare as "relocate"');
  assert.equal(echo('a b ?', 'a b'), 0, 'no word of 3+ characters asked');
  assert.equal(echo('What does relocate mean?', 'earlier question'), 0, 'only the last user turn counts');
  assert.equal(echoOf([{ role: 'system' as const, content: 'be brief' }], 'brief', q), 0, 'no user turn');
  const items = [{ prompt: ask('What does relocate mean?'), reply: '"relocate" means to move' }, { prompt: ask('What does relocate mean?'), reply: '"relocte" means to move' }];
  assert.deepEqual(covariateFeatures(['length', 'echo'], items, { tok: toyTokenizer(), questions: q }), [[4, 1], [4, 0]]);
  assert.throws(() => covariateFeatures(['echo'], items, { tok: toyTokenizer() }), /question-word statistics/);
  assert.ok(!needsReference({ echo: 4, length: -0.2 }));
  assert.ok(isQuestionWords(q) && !isQuestionWords({ questions: 2, df: { what: 0 } }) && !isQuestionWords({ questions: 1.5, df: {} }) && !isQuestionWords(null));
});

test('users who prefer replies that name the asked word: the fit gives echo a positive λ and length its own, jointly', () => {
  const rng = createRng(21);
  const words = ['relocate', 'coarse', 'deprecate', 'avid', 'jest'];
  const groups: PreferenceGroup[] = [];
  for (let i = 0; i < 3000; i++) {
    const w = words[rng.int(words.length)]!;
    const prompt = [{ role: 'user' as const, content: `What does ${w} mean?` }];
    const make = () => {
      const exact = rng() < 0.4;
      const len = 3 + rng.int(8);
      return { text: `"${exact ? w : w.slice(1)}" means ${reply(len - 2)}`, exact, len };
    };
    const [a, b] = [make(), make()];
    const z = 1.2 * (Number(a.exact) - Number(b.exact)) - 0.2 * (a.len - b.len);
    const aWins = rng() < 1 / (1 + Math.exp(-z));
    groups.push({ prompt, replies: [a.text, b.text], pairs: [aWins ? [0, 1] : [1, 0]], weight: 1, source: 'comparison' });
  }
  const questions = questionWords(groups.map((g) => g.prompt));
  const feats = groups.map((g) => covariateFeatures(['length', 'echo'], g.replies.map((r) => ({ prompt: g.prompt, reply: r })), { tok: toyTokenizer(), questions }));
  const [len, echo] = fitCovariateCoefs(groups, feats);
  // Five words asked 600 times each: the common words weigh 0, an exact reply's echo is 1, a garbled one's 0.
  assert.ok(Math.abs(len! + 0.2) < 0.04 && Math.abs(echo! - 1.2) < 0.15, `fitted length ${len}, echo ${echo} for −0.2, 1.2`);
});
