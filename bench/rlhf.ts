/**
 * RLHF throughput on the small shape (4 layers, 4 heads, 128 wide, block 128, vocab 2048) with
 * random weights: PPO steps (rollouts + scoring + reference pass, then PPO epochs) and reward-model
 * training steps. Reports the time of a PPO step's rollout (sampling, scoring, the policy and
 * reference passes) and update (advantages, PPO epochs) separately.
 *
 *   {"bench":"ppo","shape":"small","episodes_per_s":…,"rollout_ms":…,"update_ms":…,"before_episodes_per_s":…}
 *   {"bench":"reward","shape":"small","pairs_per_s":…,"before_pairs_per_s":…}
 *
 * `before_*`: the figures of this benchmark on the code issue 13 started from (commit 5054a44,
 * 2026-12-01, the same machine type at a load average near 1, three runs: PPO 6.3–7.8
 * episodes/s, reward model 33–42 pairs/s; the medians are printed), kept so a run shows how far
 * it is from them (the target is 2×). They are a record, not a measurement of this run:
 * compare them only with a run whose `machine` lines show a quiet machine.
 */
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import { createRng } from '../model/random.ts';
import type { ChatMessage } from '../model/chat-template.ts';
import { PpoTrainer } from '../training/ppo.ts';
import { RewardModelSource } from '../training/reward-source.ts';
import { trainRewardModel } from '../training/reward-model.ts';
import type { PreferenceGroup } from '../training/preferences.ts';
import { SHAPES } from './train.ts';
import { z } from 'zod';
import { isMain, printFigures, runCommand } from '../cli/command.ts';
import { jsonOption } from '../cli/options.ts';
import { benchTokenizer, sentence } from './bench-tokenizer.ts';

const BEFORE = { ppoEpisodesPerS: 6.77, rewardPairsPerS: 37.69 };

export async function benchRlhf(opts: { ppoSteps?: number; rewardSteps?: number; shape?: 'small' | 'tiny' } = {}): Promise<Record<string, unknown>[]> {
  const info = await initBackend({ log: () => {} });
  const backend = info.name + (info.nativeKernels.length ? '+native' : '');
  const shape = opts.shape ?? 'small';
  const tiny = shape === 'tiny';
  const s = SHAPES[shape];
  const cfg = { nLayer: s.nLayer, nHead: s.nHead, nEmbd: s.nEmbd, blockSize: s.blockSize, vocabSize: s.vocabSize };
  const tok = benchTokenizer(s.vocabSize);
  const rng = createRng(11);
  const words = tiny ? { prompt: 4, reply: 6 } : { prompt: 12, reply: 30 };
  const prompts: ChatMessage[][] = Array.from({ length: 64 }, () => [{ role: 'user', content: sentence(rng, words.prompt) }]);

  // ---- PPO: 16 rollouts of up to 48 tokens per step, 4 epochs of minibatches of 8.
  const policy = GPT.create(cfg, 'policy', 1);
  const reference = policy.clone('policy', false);
  const rm = policy.clone('reward');
  const knobs = tiny ? { batchSize: 4, minibatchSize: 2, epochs: 1, maxTokens: 8, lr: 1e-5, steps: 100 } : { batchSize: 16, minibatchSize: 8, epochs: 4, maxTokens: 48, lr: 1e-5, steps: 100 };
  const ppo = new PpoTrainer({ policy, reference, tok, reward: new RewardModelSource(rm, tok), prompts, knobs });
  await ppo.step(); // warm-up (kernel set-up, optimizer slots)
  const steps = opts.ppoSteps ?? (tiny ? 1 : 2);
  let rolloutMs = 0, updateMs = 0, tokens = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < steps; i++) {
    const st = await ppo.step();
    rolloutMs += st.rolloutMs;
    updateMs += st.updateMs;
    tokens += st.replyLength * knobs.batchSize;
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  ppo.dispose();
  policy.dispose();
  reference.dispose();

  // ---- Reward model: Bradley–Terry steps on 8 pairs of ~60-token exchanges.
  const groups: PreferenceGroup[] = Array.from({ length: 64 }, () => ({
    prompt: [{ role: 'user', content: sentence(rng, words.prompt) }],
    replies: [sentence(rng, words.reply), sentence(rng, words.reply)],
    pairs: [[0, 1]],
    weight: 1,
    source: 'bench',
  }));
  const rSteps = opts.rewardSteps ?? (tiny ? 1 : 4);
  const rcfg = { epochs: 1, groupsPerBatch: 8, unpairedPerBatch: 0, unpairedCoef: 0, lr: 1e-5, minLr: 1e-6, warmup: 0, weightDecay: 0, gradClip: 1, seed: 1 };
  trainRewardModel({ rm, tok, train: { groups: groups.slice(0, 8), unpaired: [] }, val: [], cfg: rcfg, log: () => {} }); // warm-up
  const r = trainRewardModel({ rm, tok, train: { groups: groups.slice(8, 8 + 8 * rSteps), unpaired: [] }, val: [], cfg: rcfg, log: () => {} });
  rm.dispose();

  const episodesPerS = (steps * knobs.batchSize) / seconds;
  const before = (figure: number, key: string, was: number) => (tiny ? {} : { [`before_${key}`]: was, speedup: +(figure / was).toFixed(2) });
  return [
    {
      bench: 'ppo',
      shape,
      episodes_per_s: +episodesPerS.toFixed(3),
      ...before(episodesPerS, 'episodes_per_s', BEFORE.ppoEpisodesPerS),
      tokens_per_s: Math.round(tokens / seconds),
      rollout_ms: Math.round(rolloutMs / steps),
      update_ms: Math.round(updateMs / steps),
      rollout_share: +(rolloutMs / (rolloutMs + updateMs)).toFixed(3),
      update_share: +(updateMs / (rolloutMs + updateMs)).toFixed(3),
      step_s: +(seconds / steps).toFixed(2),
      // CPU time of this process per step (both native threads): steadier than wall time on a shared machine.
      cpu_s_per_step: +((cpu.user + cpu.system) / 1e6 / steps).toFixed(2),
      rollouts_per_step: knobs.batchSize,
      max_tokens: knobs.maxTokens,
      ppo_epochs: knobs.epochs,
      backend,
    },
    { bench: 'reward', shape, pairs_per_s: +r.pairsPerSecond.toFixed(2), ...before(r.pairsPerSecond, 'pairs_per_s', BEFORE.rewardPairsPerS), pairs_per_step: 8, steps: r.steps, backend },
  ];
}

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'node --import tsx bench/rlhf.ts [--json]', schema: z.object(jsonOption), envPrefix: 'BENCH' }, async ({ json }) => printFigures(await benchRlhf(), json));
}
