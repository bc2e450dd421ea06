import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { ALGORITHMS, PolicyOptimizerError, createPolicyOptimizer, formatOptimizerStats, optimizerMetrics, type Algorithm, type PolicyOptimizerKnobs } from './policy-optimizer.ts';
import { ppoMetrics } from './ppo.ts';
import { RuleRewardSource } from './reward-source.ts';
import { toyConfig, toyPreferenceGroups, toyPrompts, toyTokenizer } from './rlhf-fixture.ts';

let tok: Tokenizer;
before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
  tok = toyTokenizer();
});

const isLetter = (id: number) => id >= 97 && id < 123;
const letters = new RuleRewardSource('share of letter tokens', (it) => it.replyIds.filter(isLetter).length / it.replyIds.length);
const knobs: PolicyOptimizerKnobs = { steps: 10, batchSize: 8, minibatchSize: 4, epochs: 2, maxTokens: 6, lr: 3e-3, minLr: 3e-4, temperature: 0.8, emaDecay: 0.5, adaptiveKl: true, klTarget: 0.5, klHorizon: 16, seed: 3, rlooK: 2, dpoBeta: 0.5, dpoKlSamples: 2 };

function make(algorithm: Algorithm, policy: GPT, reference: GPT, sft?: GPT) {
  return createPolicyOptimizer({ algorithm, policy, reference, klReference: sft, tok, reward: letters, prompts: toyPrompts(6), preferences: { groups: toyPreferenceGroups(12, 5), unpaired: [] }, knobs });
}

const withoutTimes = (m: Record<string, number>) => Object.fromEntries(Object.entries(m).filter(([k]) => !k.endsWith('_ms')));

for (const algorithm of ALGORITHMS) {
  test(`the factory makes a ${algorithm} optimiser whose resumed copy continues with identical state`, async () => {
    const base = GPT.create(toyConfig(tok), 'policy', 31);
    const reference = base.clone('policy', false);
    const sft = base.clone('policy', false);
    const policy = base.clone();
    const a = make(algorithm, policy, reference, sft);
    assert.equal(a.algorithm, algorithm);
    assert.equal(a.policy, policy);
    assert.notEqual(a.shipped, policy, 'the EMA is shipped');
    for (let i = 0; i < 2; i++) {
      const s = await a.step();
      assert.equal(s.algorithm, algorithm);
      assert.equal(s.step, i + 1);
      assert.ok(Number.isFinite(s.kl) && Number.isFinite(s.klCoef) && s.klSft !== undefined && Number.isFinite(s.klSft));
      assert.ok(s.reward !== undefined && s.length !== undefined && s.length > 0);
      assert.match(formatOptimizerStats(s, 10), new RegExp(`^${algorithm} step ${i + 1}/10: `));
      const m = optimizerMetrics(s);
      assert.ok(['kl', 'kl_coef', 'kl_sft'].every((k) => Number.isFinite(m[k])), JSON.stringify(m));
      if (s.algorithm === 'ppo') assert.deepEqual(m, ppoMetrics(s.detail), 'PPO logs exactly the metrics it always did');
    }
    // A checkpoint: weights, optimizer map (moments + EMA), JSON state.
    const weights = new Map([...(await policy.exportWeights())].map(([k, v]) => [k, v.data]));
    const optimizer = new Map([...(await a.exportOptimizer())].map(([k, v]) => [k, v.data]));
    assert.ok([...optimizer.keys()].some((k) => k.startsWith('ema.')) && [...optimizer.keys()].some((k) => k.startsWith('m.')));
    const state = JSON.parse(JSON.stringify(a.exportState())) as unknown;
    const resumedPolicy = GPT.fromWeights(policy.config, 'policy', weights);
    const b = make(algorithm, resumedPolicy, reference, sft);
    b.importState(state, optimizer);
    assert.equal(b.klCoef, a.klCoef, 'β carries over');
    const sa = await a.step();
    const sb = await b.step();
    assert.equal(sb.step, 3);
    assert.deepEqual(withoutTimes(optimizerMetrics(sb)), withoutTimes(optimizerMetrics(sa)));
    for (const name of ['wte', 'lnf.b']) {
      assert.deepEqual(resumedPolicy.params.get(name)!.dataSync(), policy.params.get(name)!.dataSync(), `${name} of the policy`);
      assert.deepEqual(b.shipped.params.get(name)!.dataSync(), a.shipped.params.get(name)!.dataSync(), `${name} of the EMA`);
    }
    assert.deepEqual(b.exportState(), a.exportState());
    a.dispose();
    b.dispose();
    for (const m of [base, reference, sft, policy, resumedPolicy]) m.dispose();
  });
}

test('the factory says what an algorithm is missing, and a state is only resumed by its own algorithm', async () => {
  const policy = GPT.create(toyConfig(tok), 'policy', 32);
  const code = (f: () => unknown) => {
    try {
      f();
    } catch (err) {
      return err instanceof PolicyOptimizerError ? err.code : String(err);
    }
    return 'no error';
  };
  const o = { policy, reference: policy, tok, prompts: toyPrompts(2), knobs };
  assert.equal(code(() => createPolicyOptimizer({ ...o, algorithm: 'ppo' })), 'optimizer_missing_reward');
  assert.equal(code(() => createPolicyOptimizer({ ...o, algorithm: 'rloo' })), 'optimizer_missing_reward');
  assert.equal(code(() => createPolicyOptimizer({ ...o, algorithm: 'dpo' })), 'optimizer_missing_preferences');
  assert.equal(code(() => createPolicyOptimizer({ ...o, algorithm: 'sgd' as Algorithm })), 'optimizer_unknown_algorithm');
  const ppo = createPolicyOptimizer({ ...o, algorithm: 'ppo', reward: letters });
  const rloo = createPolicyOptimizer({ ...o, algorithm: 'rloo', reward: letters });
  assert.equal(code(() => rloo.importState(ppo.exportState())), 'optimizer_state_mismatch');
  assert.equal(code(() => ppo.importState({ algorithm: 'ppo', state: { step: -1 } })), 'optimizer_state_invalid');
  ppo.dispose();
  rloo.dispose();
  policy.dispose();
});
