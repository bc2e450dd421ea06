/**
 * A diagnostic, outside every decision of the loop: what does the reward model learn from one
 * round of the simulated users' judgements? It samples a round of sessions on SFT replies (the
 * users' mix: a quarter thumbs, half comparisons, a quarter 4-way rankings, judged by the users'
 * rubric with their noise), trains the loop's reward ensemble on them with the story's settings,
 * and reports its accuracy on held-out pairs (4 SFT replies on each of 256 held-out prompts) split
 * by which part of the rubric differs between the two replies, at equal length, and the
 * correlation of its score with reply length. Gold only measures here.
 *
 *   node --import tsx sim/reward-probe.ts [--sessions 1500] [--epochs 1] [--lr 3e-4] [--members 3]
 *       [--covariates length+likelihood] [--fit-only] [--policy checkpoints/sft] [--seed 1] [--best-of 1,2,4,8]
 *
 * `--best-of` also measures best-of-n with the trained ensemble as the server's reranker does it
 * (mean − k·std, `--pessimism` k): on each held-out prompt, 8 policy samples are scored and, for
 * every n listed, the best of n of them is compared by gold with an independent policy sample
 * (4 pairs a prompt, paired bootstrap over prompts; the length-controlled rate as the story's).
 *
 * `--fit-only` skips the heads: the covariates' Bradley–Terry fit alone, scored the same way.
 */
import { z } from 'zod';
import { runCommand } from '../cli/command.ts';
import { initBackend } from '../model/backend.ts';
import { loadCheckpoint } from '../model/checkpoint.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { GPT } from '../model/gpt.ts';
import { sampleForEval } from '../training/loop-eval.ts';
import { GoldRubric, NoisyJudge, Rng, type DefinitionPrompt, type RubricBreakdown } from './gold-rubric.ts';
import { dialoguePrompts } from './simulate.ts';
import { trainRewardEnsemble, memberScores, spreadOf } from '../training/reward-ensemble.ts';
import { replyWords } from '../feedback/reply-words.ts';
import { COVARIATE_SETS, covariatesOf } from '../training/covariate-sets.ts';
import { rankingGroup, type PreferenceGroup, type UnpairedExample } from '../training/preferences.ts';
import type { ArenaOutcome } from '../feedback/arena.ts';

const ProbeConfig = z.object({
  sessions: z.number().int().positive().default(1500).describe("the users' sessions of the round"),
  epochs: z.number().int().positive().default(1).describe('reward-model epochs'),
  lr: z.number().positive().default(3e-4).describe('reward-model learning rate'),
  members: z.number().int().positive().default(3).describe('ensemble members'),
  covariates: z.enum(COVARIATE_SETS).optional().describe('reward covariates fitted first (default: none)'),
  fitOnly: z.boolean().default(false).describe("the covariates' Bradley–Terry fit alone, no heads"),
  policy: z.string().default('checkpoints/sft').describe('policy whose replies are judged'),
  seed: z.number().int().nonnegative().default(1).describe("seed of the users' draws"),
  heldout: z.number().int().positive().default(256).describe('held-out prompts scored'),
  data: z.string().default('data').describe('dialogues.{train,val}.jsonl; built when missing'),
  bestOf: z.string().optional().describe('comma-separated n (at most 8): best-of-n by the ensemble against one policy sample, by gold'),
  pessimism: z.number().nonnegative().default(1).describe("with --best-of: k of the reranker's mean − k·std (the loop's default)"),
});
let args: z.infer<typeof ProbeConfig> | undefined;
await runCommand({ usage: 'node --import tsx sim/reward-probe.ts [options]', schema: ProbeConfig, envPrefix: 'REWARD_PROBE' }, async (cfg) => {
  args = cfg;
});
if (!args) process.exit(process.exitCode ?? 0); // --help, or a usage error already printed
const { sessions, epochs, lr, members, policy: policyDir } = args;
await initBackend({ log: () => {} });
const ck = loadCheckpoint('checkpoints/sft', { kind: 'policy' });
const tok = Tokenizer.fromJSON(ck.tokenizer);
const sft = GPT.fromWeights(ck.meta.config, 'policy', ck.weights);
const pk = loadCheckpoint(policyDir, { kind: 'policy' });
const policy = GPT.fromWeights(pk.meta.config, 'policy', pk.weights);
const { train, val } = await dialoguePrompts(args.data, (l) => console.error(`reward-probe: ${l}`));
const rub = new GoldRubric([...train, ...val]);
const end = tok.specialId('<|end|>');
const rng = new Rng(args.seed);
const judge = new NoisyJudge(rng);
const conv = (p: DefinitionPrompt) => [{ role: 'user' as const, content: p.prompt }];

function sample(ps: DefinitionPrompt[], seed: number) {
  const out: { text: string; b: RubricBreakdown; words: number }[] = [];
  for (let i = 0; i < ps.length; i += 64) {
    const chunk = ps.slice(i, i + 64);
    const eps = sampleForEval(policy, tok, chunk.map(conv), { maxTokens: 48, temperature: 1, topP: 0.95, seed: seed + i });
    eps.forEach((e, j) => out.push({ text: e.reply, b: rub.breakdown(chunk[j]!.prompt, e.reply, e.replyIds.at(-1) === end), words: replyWords(e.reply) }));
  }
  return out;
}

const t0 = Date.now();
const groups: PreferenceGroup[] = [];
const unpaired: UnpairedExample[] = [];
const kinds = Array.from({ length: sessions }, () => rng.pick(['thumb', 'comparison', 'comparison', 'ranking'] as const));
const sessPrompts = kinds.map(() => rng.pick(train));
const sizes = kinds.map((k) => (k === 'thumb' ? 1 : k === 'comparison' ? 2 : 4));
const flat = sessPrompts.flatMap((p, i) => Array.from({ length: sizes[i]! }, () => p));
const replies = sample(flat, 11);
let at = 0;
for (let i = 0; i < sessions; i++) {
  const rs = replies.slice(at, at + sizes[i]!);
  at += sizes[i]!;
  const p = conv(sessPrompts[i]!);
  const g = rs.map((r) => r.b.total);
  if (kinds[i] === 'thumb') unpaired.push({ prompt: p, reply: rs[0]!.text, label: judge.thumb(g[0]!) === 'up', weight: 1 });
  else if (kinds[i] === 'comparison') {
    const c = judge.compare(g[0]!, g[1]!);
    if (c === 'tie') groups.push({ prompt: p, replies: [rs[0]!.text, rs[1]!.text], pairs: [], ties: [[0, 1]], weight: 1, source: 'tie' });
    else groups.push({ prompt: p, replies: [rs[0]!.text, rs[1]!.text], pairs: [c === 'a' ? [0, 1] : [1, 0]], weight: 1, source: 'comparison' });
  } else {
    const order = judge.rankDistinct(g);
    if (order.length >= 2) groups.push(rankingGroup(p, order.map((k) => rs[k]!.text)));
  }
}
console.log(`data: ${groups.length} groups, ${unpaired.length} thumbs (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
if (args.fitOnly) {
  const { covariateFeatures, fitCovariateCoefs } = await import('../training/reward-covariates.ts');
  const names = ['length', 'likelihood'] as const;
  const feats = groups.map((g) => covariateFeatures(names, g.replies.map((reply) => ({ prompt: g.prompt, reply })), { reference: sft, tok }));
  const lam = fitCovariateCoefs(groups, feats);
  const lamLen = fitCovariateCoefs(groups, feats.map((f) => f.map((x) => [x[0]!])));
  console.log('λ (length, likelihood)', lam, 'length alone', lamLen);
  // On the users' own labels: the fixed eval split's judgements (as the loop's guard reads them), fitted on train only.
  const { splitPreferences } = await import('../training/preferences.ts');
  const parts = splitPreferences({ groups, unpaired });
  const featOf = new Map(groups.map((g, i) => [g, feats[i]!]));
  const fitOn = (gs: PreferenceGroup[], k?: number) => fitCovariateCoefs(gs, gs.map((g) => featOf.get(g)!.map((f) => (k === undefined ? f : [f[k]!]))));
  const usersAcc = (lamT: number[], k?: number) => {
    let hit = 0, n = 0;
    for (const g of parts.eval.groups) for (const [w, l] of g.pairs) {
      const f = featOf.get(g)!;
      const sc = (i: number) => (k === undefined ? lamT[0]! * f[i]![0]! + lamT[1]! * f[i]![1]! : lamT[0]! * f[i]![k]!);
      hit += sc(w) > sc(l) ? 1 : sc(w) === sc(l) ? 0.5 : 0;
      n++;
    }
    return `${(hit / n).toFixed(3)} over ${n}`;
  };
  console.log('users\' eval split accuracy: length+likelihood', usersAcc(fitOn(parts.train.groups)), '; length alone', usersAcc(fitOn(parts.train.groups, 0), 0));
  const hp = val.slice(0, 256);
  const h = sample(hp.flatMap((p) => [p, p, p, p]), 999);
  const hf = covariateFeatures(names, h.map((x, i) => ({ prompt: conv(hp[Math.floor(i / 4)]!), reply: x.text })), { reference: sft, tok });
  const sc = hf.map((f) => lam[0]! * f[0]! + lam[1]! * f[1]!);
  const cats: Record<string, [number, number]> = {};
  const add = (k: string, ok: boolean) => ((cats[k] ??= [0, 0]), (cats[k]![0] += ok ? 1 : 0), cats[k]![1]++);
  for (let q = 0; q < hp.length; q++) for (let i = 0; i < 4; i++) for (let j = i + 1; j < 4; j++) {
    const a = h[q * 4 + i]!, b = h[q * 4 + j]!; const dg = a.b.total - b.b.total; if (Math.abs(dg) < 0.05) continue;
    const ok = Math.sign(sc[q * 4 + i]! - sc[q * 4 + j]!) === Math.sign(dg); add('all', ok);
    const df = a.b.format - b.b.format, dl = a.b.length - b.b.length;
    if (Math.abs(df) >= 0.25 && Math.abs(dl) < 0.15) add('format, |Δlen| ≤ 1 word', ok);
    if (a.words === b.words) add('equal words', ok);
  }
  for (const [k, [ok, n]] of Object.entries(cats)) console.log(`${k.padEnd(34)} ${(ok / n).toFixed(3)} over ${n}`);
  process.exit(0);
}
const r = trainRewardEnsemble({ sft, tok, data: { groups, unpaired }, cfg: { members, epochs, lr, seed: 3, covariates: args.covariates ? covariatesOf(args.covariates) : [] }, log: () => {} });
console.log(`λ ${JSON.stringify(r.covariates)}; trained in ${r.seconds.toFixed(0)} s; its own eval split accuracy ${r.evalSet.accuracy.toFixed(3)} over ${r.evalSet.pairs}`);

// Held-out: 4 samples on each of 256 val prompts, all 6 pairs, by gold.
const hp = val.slice(0, args.heldout);
const h = sample(hp.flatMap((p) => [p, p, p, p]), 999);
const scores = spreadOf(memberScores(r.ensemble, tok, h.map((x, i) => ({ prompt: conv(hp[Math.floor(i / 4)]!), reply: x.text })))).map((s) => s.mean);
const cats: Record<string, [number, number]> = {};
const add = (k: string, ok: boolean) => ((cats[k] ??= [0, 0]), (cats[k]![0] += ok ? 1 : 0), cats[k]![1]++);
for (let q = 0; q < hp.length; q++)
  for (let i = 0; i < 4; i++)
    for (let j = i + 1; j < 4; j++) {
      const a = h[q * 4 + i]!, b = h[q * 4 + j]!;
      const dg = a.b.total - b.b.total;
      if (Math.abs(dg) < 0.05) continue;
      const ok = Math.sign(scores[q * 4 + i]! - scores[q * 4 + j]!) === Math.sign(dg);
      add('all', ok);
      const df = a.b.format - b.b.format, dov = a.b.overlap - b.b.overlap, dl = a.b.length - b.b.length, dc = a.b.clean - b.b.clean + a.b.empty - b.b.empty;
      if (a.words === b.words) add('equal words', ok);
      if (Math.abs(df) >= 0.25 && Math.abs(dl) < 0.15 && Math.abs(dov) < 0.01 && dc === 0) add('format only (|Δlen| ≤ 1 word)', ok);
      if (Math.abs(dov) >= 0.1 && Math.abs(df) < 0.01 && Math.abs(dl) < 0.15 && dc === 0) add('overlap only', ok);
      if (Math.abs(dl) >= 0.1 && Math.abs(df) < 0.01 && Math.abs(dov) < 0.01 && dc === 0) add('length only', ok);
      if (dc !== 0 && Math.abs(df) < 0.01 && Math.abs(dov) < 0.01) add('clean/empty only', ok);
      const parts = { format: Math.abs(df), overlap: Math.abs(dov), length: Math.abs(dl), clean: Math.abs(dc) };
      const top = Object.entries(parts).sort((x, y) => y[1] - x[1])[0]![0];
      add(`largest part ${top}`, Math.sign(scores[q * 4 + i]! - scores[q * 4 + j]!) === Math.sign(top === 'format' ? df : top === 'overlap' ? dov : top === 'length' ? dl : dc));
    }
for (const [k, [ok, n]] of Object.entries(cats)) console.log(`${k.padEnd(34)} ${(ok / n).toFixed(3)} over ${n}`);
// correlation of score with words and with format
const corr = (x: number[], y: number[]) => { const mx = x.reduce((a, b) => a + b) / x.length, my = y.reduce((a, b) => a + b) / y.length; let sxy = 0, sxx = 0, syy = 0; x.forEach((v, i) => { sxy += (v - mx) * (y[i]! - my); sxx += (v - mx) ** 2; syy += (y[i]! - my) ** 2; }); return sxy / Math.sqrt(sxx * syy); };
console.log('corr(score, words)', corr(scores, h.map((x) => x.words)).toFixed(3), 'corr(score, format)', corr(scores, h.map((x) => x.b.format)).toFixed(3), 'corr(score, gold)', corr(scores, h.map((x) => x.b.total)).toFixed(3), 'corr(gold, words)', corr(h.map((x) => x.b.total), h.map((x) => x.words)).toFixed(3));
console.log('policy means', JSON.stringify(Object.fromEntries((['format', 'overlap', 'length', 'clean', 'total'] as const).map((k) => [k, (h.reduce((a, x) => a + x.b[k], 0) / h.length).toFixed(3)]))), 'words', (h.reduce((a, x) => a + x.words, 0) / h.length).toFixed(1));
if (args.bestOf) await bestOf(args.bestOf.split(',').map(Number), args.pessimism);
console.log(`total ${((Date.now() - t0) / 1000).toFixed(0)} s`);

/** Best-of-n by the ensemble (as the server reranks) against one policy sample, judged by gold. */
async function bestOf(ns: number[], pessimism: number): Promise<void> {
  const { EnsembleRewardSource } = await import('../training/reward-ensemble.ts');
  const { lengthControlledWinRate } = await import('../feedback/arena.ts');
  const { pairedBootstrap } = await import('./stats.ts');
  const N = 8;
  for (const n of ns) if (!(Number.isInteger(n) && n >= 1 && n <= N)) throw new Error(`--best-of: n must be 1..${N}, got ${n}`);
  const rs = new EnsembleRewardSource(r.ensemble, tok, { pessimism });
  const pool = sample(hp.flatMap((p) => Array<DefinitionPrompt>(N).fill(p)), 4242);
  const single = sample(hp.flatMap((p) => [p, p, p, p]), 5555);
  const sc = await rs.score(pool.map((x, i) => ({ prompt: conv(hp[Math.floor(i / N)]!), reply: x.text, replyIds: [] })));
  for (const n of ns) {
    const outcomes: ArenaOutcome[] = [];
    const wins: number[] = [];
    let fA = 0, fB = 0, wA = 0, wB = 0;
    for (let q = 0; q < hp.length; q++) {
      let w = 0;
      for (let k = 0; k < 4; k++) {
        // Pair k takes n of the prompt's 8 samples (the k-th run of n, wrapping) and keeps the best.
        let best = -1;
        for (let j = 0; j < n; j++) {
          const idx = q * N + ((k * n + j) % N);
          if (best < 0 || sc[idx]! > sc[best]!) best = idx;
        }
        const a = pool[best]!, b = single[q * 4 + k]!;
        const outcome = a.b.total > b.b.total ? 'win' : a.b.total < b.b.total ? 'loss' : 'tie';
        w += outcome === 'win' ? 1 : outcome === 'tie' ? 0.5 : 0;
        outcomes.push({ outcome, lengthDiff: a.words - b.words, raterId: 'gold', createdAt: '' });
        fA += a.b.format; fB += b.b.format; wA += a.words; wB += b.words;
      }
      wins.push(w / 4);
    }
    const bt = pairedBootstrap(wins, { seed: 1 });
    const m = hp.length * 4;
    console.log(`best of ${n}: gold win rate vs one sample ${bt.mean.toFixed(3)} [${bt.interval.map((x) => x.toFixed(3)).join(', ')}], length-controlled ${lengthControlledWinRate(outcomes).p.toFixed(3)}, format ${(fA / m).toFixed(3)} vs ${(fB / m).toFixed(3)}, words ${(wA / m).toFixed(1)} vs ${(wB / m).toFixed(1)}`);
  }
}
