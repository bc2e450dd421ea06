/**
 * A toy online-loop world for tests and the loop benchmark: a tiny SFT checkpoint, a store seeded
 * with conversations and comparisons (replies with the target word preferred), and fast loop knobs.
 */
import { join } from 'node:path';
import { GPT } from '../model/gpt.ts';
import { saveCheckpoint } from '../model/checkpoint.ts';
import { addAssistantReply, addMessage, createConversation, submitJudgements, type FeedbackStore } from '../feedback/index.ts';
import { toyConfig, toyPreferenceGroups, toyTokenizer } from './rlhf-fixture.ts';

/** Saves the toy SFT policy in `<root>/sft` and returns the directory. */
export async function saveToySft(root: string): Promise<string> {
  const tok = toyTokenizer();
  const sft = GPT.create(toyConfig(tok), 'policy', 41);
  const dir = join(root, 'sft');
  saveCheckpoint(dir, {
    weights: await sft.exportWeights(),
    meta: { stage: 'sft', kind: 'policy', config: sft.config, tokenizerFingerprint: tok.fingerprint(), parent: null, step: 1, metrics: {}, runConfig: {} },
    tokenizer: tok.toJSON(),
  });
  sft.dispose();
  return dir;
}

/** Adds `n` conversations, each with two replies and a comparison preferring the target word; returns the judgement ids. */
export async function seedJudgements(store: FeedbackStore, n = 40, seed = 12): Promise<string[]> {
  const judgements = [];
  for (const g of toyPreferenceGroups(n, seed)) {
    const conv = await createConversation(store.db, { userId: 'u1' });
    const q = await addMessage(store.db, { conversationId: conv.id, role: 'user', content: g.prompt[0]!.content, userId: 'u1' });
    const ids = [];
    for (const [i, reply] of g.replies.entries()) {
      const { message } = await addAssistantReply(store.db, {
        message: { conversationId: conv.id, parentId: q.id, content: reply },
        generation: { modelVersionId: 'sft-x', params: {}, seed: i, finishReason: 'stop', promptTokens: 5, completionTokens: 3, latencyMs: 1, ttftMs: 1 },
      });
      ids.push(message.id);
    }
    judgements.push({ kind: 'comparison' as const, raterId: 'u1', a: ids[1]!, b: ids[0]!, choice: 'b' as const });
  }
  const results = await submitJudgements(store.db, judgements);
  const bad = results.find((r) => !r.ok);
  if (bad) throw new Error(`seeding judgements failed: ${JSON.stringify(bad)}`);
  return results.map((r) => (r as { id?: string }).id ?? '');
}

/** Loop knobs small enough for a test: one iteration of tiny PPO in a few seconds. */
export function toyLoopKnobs(root: string, sft: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    sft, checkpoints: join(root, 'ck'), minNewJudgements: 10, rewardEpochs: 4, rewardLr: 3e-3, minRewardAccuracy: 0, ppoSteps: 6, batchSize: 8, minibatchSize: 4,
    epochs: 1, maxTokens: 6, lr: 1e-3, evalPrompts: 4, evalEvery: 2, klBudget: 1000, autoPromote: true, minScoreGain: -100, pollSeconds: 600, backend: 'wasm', checkpointEvery: 2, ...extra,
  };
}
