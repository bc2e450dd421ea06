/**
 * A diagnostic, outside every decision of the loop: can the policy optimiser learn the rubric's
 * format part (the reply starts with `"W" means`, W copied exactly) at all? It runs the loop's
 * optimiser (PPO or RLOO, the loop's knobs), or rejection-sampling fine-tuning (`best-of-n`), from SFT on a reward that is the format part alone,
 * `--reward format` (an oracle: the simulated users' rubric; this file only measures), or the
 * users' echo covariate, `--reward echo` (the IDF-weighted share of the question's words the reply
 * repeats, IDF over the training prompts, scaled by `--echo-weight`), and reports on held-out prompts, at the users' sampling (T 1, top-p
 * 0.95), the mean format part, the share of exact copies, the words and the KL to SFT.
 *
 * Beside it, the sharpness family π_s ∝ π^s (the final layer norm's gain and bias times s, so the
 * tied head's logits are s times SFT's): what lowering the policy's entropy everywhere buys in
 * format, and what it costs in KL.
 *
 *   node --import tsx sim/format-probe.ts [--algorithm ppo|rloo|best-of-n] [--n 4] [--steps 200] [--lr 0.00005]
 *       [--kl-coef 0.6] [--reward format] [--echo-weight 4] [--every 50] [--heldout 256] [--seed 3]
 */
import { z } from 'zod';
import { runCommand } from '../cli/command.ts';
import { initBackend } from '../model/backend.ts';
import { loadCheckpoint } from '../model/checkpoint.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { GPT } from '../model/gpt.ts';
import { DEFAULT_SAMPLING } from '../model/sampling.ts';
import { lastUserTurn, type ChatMessage } from '../model/chat-template.ts';
import { sampleForEval } from '../training/loop-eval.ts';
import { episodeKl } from '../training/ppo.ts';
import * as tf from '@tensorflow/tfjs-core';
import { createPolicyOptimizer } from '../training/policy-optimizer.ts';
import { AdamW } from '../model/adamw.ts';
import { createRng } from '../model/random.ts';
import { trainStep, type Batch } from '../training/train-loop.ts';
import { warmupCosine } from '../training/rlhf-common.ts';
import type { Episode } from '../training/ppo.ts';
import { OnlineLoopConfig } from '../training/loop-config.ts';
import { echoOf, questionWords } from '../training/reward-covariates.ts';
import type { RewardItem, RewardSource } from '../training/reward-source.ts';
import { replyWords } from '../feedback/reply-words.ts';
import { GoldRubric } from './gold-rubric.ts';
import { dialoguePrompts } from './simulate.ts';

const ProbeConfig = z.object({
  algorithm: z.enum(['ppo', 'rloo', 'best-of-n']).default('ppo').describe('policy optimiser; best-of-n = rejection-sampling fine-tuning: the best of n samples per prompt by the reward, one cross-entropy step on 16 of them'),
  n: z.number().int().min(2).default(4).describe('best-of-n: samples per prompt'),
  steps: z.number().int().positive().default(200).describe('optimiser steps'),
  lr: z.number().positive().default(5e-5).describe('peak learning rate (cosine to a tenth), the simulation\'s'),
  klCoef: z.number().nonnegative().default(0.6).describe('β of the first step (adaptive, as in the loop)'),
  reward: z.enum(['format', 'echo']).default('format').describe('format = the rubric\'s format part (oracle); echo = echo-weight × the echo covariate'),
  echoWeight: z.number().positive().default(4).describe('λ of the echo reward'),
  every: z.number().int().positive().default(50).describe('steps between held-out measurements'),
  heldout: z.number().int().positive().default(256).describe('held-out prompts measured'),
  sharpness: z.string().default('1,1.15,1.3,1.5').describe('comma-separated s of the sharpness family (empty: skip)'),
  temperature: z.number().positive().default(1).describe('sampling temperature of rollouts and measurements (the simulated users\' chats)'),
  seed: z.number().int().nonnegative().default(3).describe('seed of prompts and sampling'),
  data: z.string().default('data').describe('dialogues.{train,val}.jsonl; built when missing'),
  sft: z.string().default('checkpoints/sft').describe('the SFT checkpoint the optimiser starts from and the KL is measured to'),
});
let args: z.infer<typeof ProbeConfig> | undefined;
await runCommand({ usage: 'node --import tsx sim/format-probe.ts [options]', schema: ProbeConfig, envPrefix: 'FORMAT_PROBE' }, async (cfg) => {
  args = cfg;
});
if (!args) process.exit(process.exitCode ?? 0); // --help, or a usage error already printed
const a = args;
await initBackend({ log: () => {} });
const ck = loadCheckpoint(a.sft, { kind: 'policy' });
const tok = Tokenizer.fromJSON(ck.tokenizer);
const sft = GPT.fromWeights(ck.meta.config, 'policy', ck.weights);
const dialogues = await dialoguePrompts(a.data, (l) => console.error(`format-probe: ${l}`));
const train = dialogues.train;
const heldout = dialogues.val.slice(0, a.heldout);
const rubric = new GoldRubric([...train, ...heldout]);
const end = tok.specialId('<|end|>');
const conv = (p: { prompt: string }): ChatMessage[] => [{ role: 'user', content: p.prompt }];
const mean = (xs: readonly number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;

/** Format, exact copies, words and KL to SFT of `policy` on the held-out prompts, at the users' sampling. */
function measure(policy: GPT): string {
  const eps = sampleForEval(policy, tok, heldout.map(conv), { maxTokens: 48, temperature: a.temperature, topP: DEFAULT_SAMPLING.topP, seed: a.seed + 101 });
  const parts = eps.map((e, i) => rubric.breakdown(heldout[i]!.prompt, e.reply, e.replyIds.at(-1) === end));
  const f = (x: number, d = 3) => x.toFixed(d);
  return `format ${f(mean(parts.map((p) => p.format)))} exact ${f(mean(parts.map((p) => (p.format === 1 ? 1 : 0))))} gold ${f(mean(parts.map((p) => p.total)))} words ${f(mean(eps.map((e) => replyWords(e.reply))), 1)} kl ${f(mean(episodeKl(policy, sft, tok, eps, a.temperature)), 2)}`;
}

console.log(`sft: ${measure(sft)}`);
for (const s of a.sharpness.split(',').filter(Boolean).map(Number)) {
  const w = new Map(ck.weights);
  for (const n of ['lnf.g', 'lnf.b']) w.set(n, w.get(n)!.map((x) => x * s));
  const sharp = GPT.fromWeights(ck.meta.config, 'policy', w);
  console.log(`sharpness ${s}: ${measure(sharp)}`);
  sharp.dispose();
}

const questions = questionWords(train.map(conv));
const reward: RewardSource = {
  name: a.reward,
  score: async (batch: readonly RewardItem[]) =>
    batch.map((it) => (a.reward === 'format' ? rubric.breakdown(lastUserTurn(it.prompt), it.reply, true).format : a.echoWeight * echoOf(it.prompt, it.reply, questions))),
};
const loop = OnlineLoopConfig.parse({});
const policy = sft.clone();
const report = (step: number, beta?: number) => {
  if (step % a.every === 0 || step === a.steps) console.log(`${a.algorithm} step ${step}${beta === undefined ? '' : ` (β ${beta.toFixed(3)})`}: ${measure(policy)}`);
};
if (a.algorithm === 'best-of-n') await bestOfN();
else {
  const opt = createPolicyOptimizer({
    algorithm: a.algorithm, policy, reference: sft, tok, reward, prompts: train.map(conv), log: () => {},
    knobs: { steps: a.steps, batchSize: loop.batchSize, minibatchSize: loop.minibatchSize, epochs: loop.epochs, maxTokens: loop.maxTokens, temperature: a.temperature, lr: a.lr, minLr: a.lr / 10, klCoef: a.klCoef, adaptiveKl: true, klTarget: loop.klTarget, klHorizon: 10 * loop.batchSize, seed: a.seed, rlooK: loop.rlooK },
  });
  for (let step = 1; step <= a.steps; step++) report(step, (await opt.step()).klCoef);
  opt.dispose();
}

/**
 * Rejection-sampling fine-tuning: each step samples n replies to each of `batchSize` training
 * prompts (untruncated, as rollouts are), keeps the best by the reward (a reply without the end
 * of turn last), and takes one AdamW step of cross-entropy on the kept replies' tokens. No KL
 * term: its KL to SFT is what the measurements report.
 */
async function bestOfN(): Promise<void> {
  const opt = new AdamW(policy.params, { weightDecay: 0 });
  const vars = [...policy.params.values()] as tf.Variable[];
  const rng = createRng(a.seed);
  const pad = tok.specialId('<|pad|>');
  const B = loop.batchSize;
  for (let step = 1; step <= a.steps; step++) {
    const prompts = Array.from({ length: B }, () => conv(train[rng.int(train.length)]!));
    const eps = sampleForEval(policy, tok, prompts.flatMap((p) => Array.from({ length: a.n }, () => p)), { maxTokens: loop.maxTokens, temperature: a.temperature, topP: 1, seed: a.seed * 100_003 + step });
    const scores = await reward.score(eps.map((e) => ({ prompt: e.prompt, reply: e.reply, replyIds: e.replyIds })));
    const value = (i: number) => scores[i]! - (eps[i]!.replyIds.at(-1) === end ? 0 : 1e6);
    const kept: Episode[] = prompts.map((_, b) => {
      let best = b * a.n;
      for (let i = best + 1; i < (b + 1) * a.n; i++) if (value(i) > value(best)) best = i;
      return eps[best]!;
    });
    const rows = kept.map((e) => [...e.promptIds, ...e.replyIds]);
    const T = Math.max(...rows.map((r) => r.length)) - 1;
    const batch: Batch = { B, T, inputs: new Int32Array(B * T).fill(pad), targets: new Int32Array(B * T).fill(pad), weights: new Float32Array(B * T) };
    rows.forEach((r, b) => {
      for (let t = 0; t + 1 < r.length; t++) {
        batch.inputs[b * T + t] = r[t]!;
        batch.targets[b * T + t] = r[t + 1]!;
        batch.weights[b * T + t] = t + 1 >= kept[b]!.promptIds.length ? 1 : 0; // the reply's tokens and its end
      }
    });
    trainStep(policy, opt, batch, warmupCosine(step - 1, a.steps, a.lr, a.lr / 10, 0), vars);
    report(step);
  }
  opt.dispose();
}
