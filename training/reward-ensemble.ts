/**
 * A reward-model ensemble for the online loop: K members, each the SFT trunk with a scalar head
 * (reward-model.ts), trained every round on the users' judgements; PPO optimises the
 * pessimistic score mean − k·std across members, and the spread is the loop's sign of Goodhart.
 *
 *   score(x, y)  = μ(x, y) − k·σ(x, y),   μ, σ the mean and (population) standard deviation of
 *                  the K members' scores r_j(x, y);  k = `pessimism` (0 = the plain mean).
 *
 * Training, per round (see {@link trainRewardEnsemble}):
 *  1. Splits by context: every judgement (pick, ranking, sibling thumbs, tie, lone thumb) goes to
 *     train / val / eval by a hash of its prompt text ({@link splitByContext}, 80/10/10), so the
 *     splits never move between rounds: 'eval' is the fixed set whose accuracy compares rounds,
 *     'val' stops training early. Prompts split the same way ({@link splitPrompts}).
 *  2. Member j warm-starts from member j of the previous round's ensemble (the SFT trunk with a
 *     zero head in the first round) and is trained on bootstrap weights: Poisson(1) per judgement
 *     and member (Bagging as in Lakshminarayanan et al. 2017's deep ensembles, which use seeds
 *     alone; here both). A judgement whose weight is 0 is skipped, so a member sees about 63%
 *     of the distinct judgements per epoch: K = 3 costs about 1.9 single-model trainings.
 *  3. Recency: ω = 0.5^(age / halfLife), age = how many judgements are newer (ties of time share
 *     an age); 0 = off.
 *  4. Ties enter with Bradley–Terry target ½ and `tieWeight`; an optional margin m (−log σ(Δ − m)).
 *  5. Early stopping on each member's val loss with `patience` evaluations, best weights kept.
 *  6. Covariates (`covariates`, reward-covariates.ts): their weights λ are fitted once per round
 *     by a Bradley–Terry model of the train judgements on the covariates alone, and every member
 *     scores r_j(x, y) = q_j(x, y) + Σ λ_k f_k(x, y) with λ fixed, so the heads learn what the
 *     covariates do not explain. One λ for all members: that part has no disagreement. The
 *     optimiser's proxy can weigh length apart (`lengthWeight`: mean − k·std − (1 − w)·λ_length·words).
 *  7. Heads or covariates alone (`heads: 'auto'`): a reward of the covariates alone is a model
 *     too, and the users' 'val' judgements choose between the two each round by their
 *     Bradley–Terry loss. When the covariates alone explain the held-out judgements better, the
 *     heads are zeroed (they added noise, not signal) and the members agree exactly; the choice
 *     is logged and reported (`heads`). 'eval' stays untouched by the choice.
 *
 * Deviations: members are K whole models, not K heads on one shared trunk. Heads on a frozen or
 * shared trunk disagree far less where the trunk's features are what is wrong (out-of-
 * distribution replies PPO finds), which is the disagreement the loop watches; the cost is K
 * forward passes when scoring (PPO scores one batch per step, small next to rollouts).
 *
 * Storage: one checkpoint (model/checkpoint.ts: atomic directory, sha256 of the weights) whose
 * `model.safetensors` holds every member under the prefix `member.<j>.` and whose
 * `meta.metrics.members` is K. A plain single reward checkpoint loads as K = 1.
 *
 * Scoring always uses the canonical re-encoding of the reply text plus `<|end|>`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { CheckpointError, loadCheckpoint, saveCheckpoint, type CheckpointMeta } from '../model/checkpoint.ts';
import type { ChatMessage } from '../model/chat-template.ts';
import { createRng, type Rng } from '../model/random.ts';
import { mean } from './rlhf-common.ts';
import { pairStatistics, scoreExchanges, trainRewardModel, type RewardEval } from './reward-model.ts';
import { splitByContext, splitPreferences, splitPrompts, promptText, type PreferenceData, type PreferenceGroup } from './preferences.ts';
import { RewardError, type RewardItem, type RewardSource } from './reward-source.ts';
import { COVARIATES, covariateFeatures, fitCovariateCoefs, isQuestionWords, needsReference, questionWords, type Covariate, type CovariateCoefs, type QuestionWords } from './reward-covariates.ts';
import { replyWords } from '../feedback/reply-words.ts';
import { replyAsText } from './reward-model.ts';

export { splitByContext, splitPrompts, promptText };

/** Knobs of one ensemble training (every round of the loop). */
export interface EnsembleTrainConfig {
  /** K, the number of members (default 3). */
  members: number;
  /** Most passes over the training judgements (early stopping may end sooner). */
  epochs: number;
  /** Peak learning rate (cosine to lr/10). */
  lr: number;
  /** Early stopping: evaluations on 'val' without a lower loss before a member stops (0 = off). */
  patience: number;
  /** Recency half-life in judgements: weight 0.5^(age/halfLife); 0 = off. */
  recencyHalfLife: number;
  /** Weight of a tie's Bradley–Terry term with target ½ (0 = ties ignored). */
  tieWeight: number;
  /** Margin m in −log σ(Δ − m) (0 = off). */
  margin: number;
  /** Weight of the lone-thumb loss (0 = pairs only). */
  unpairedCoef: number;
  seed: number;
  /** Judgement groups per optimizer step. */
  groupsPerBatch: number;
  /** Unpaired thumbs per optimizer step. */
  unpairedPerBatch: number;
  /** Steps between val evaluations (0 = once per epoch). */
  evalEvery: number;
  /** Poisson(1) bootstrap weights per member (default on when K > 1). */
  bootstrap: boolean;
  /** Covariates whose λ is fitted on the judgements and fixed in every member's score (file comment, 6); [] = none. */
  covariates: readonly Covariate[];
  /**
   * The heads (file comment, 7): 'on' keeps them; 'auto' keeps them only when the ensemble's
   * loss on the 'val' judgements is lower with them than with the covariates alone, else zeroes
   * them (the score is then Σ λ f). Without covariates the heads are always kept.
   */
  heads: 'on' | 'auto';
}

export const ENSEMBLE_DEFAULTS: Readonly<EnsembleTrainConfig> = Object.freeze({
  members: 3,
  epochs: 3,
  lr: 1e-4,
  patience: 2,
  recencyHalfLife: 0,
  tieWeight: 1,
  margin: 0,
  unpairedCoef: 0.5,
  seed: 3,
  groupsPerBatch: 8,
  unpairedPerBatch: 8,
  evalEvery: 0,
  bootstrap: true,
  covariates: [],
  heads: 'on',
});

/** K reward models scored together. */
export interface RewardEnsemble {
  members: GPT[];
  /** λ of the covariates in every member's score (empty = none). */
  covariates: CovariateCoefs;
  /** The reference policy the likelihood and relevance covariates read (not owned: dispose leaves it). */
  reference?: GPT;
  /** The question-word statistics the echo covariate weighs words by (fitted with λ, saved with the ensemble). */
  questions?: QuestionWords;
  dispose(): void;
}

/**
 * An ensemble owning `members` (dispose frees them all), with covariate weights λ (default none);
 * a likelihood or relevance covariate needs the `reference` policy, an echo covariate the
 * `questions` statistics.
 */
export function rewardEnsemble(members: GPT[], covariates: CovariateCoefs = {}, reference?: GPT, questions?: QuestionWords): RewardEnsemble {
  if (!members.length) throw new Error('a reward ensemble needs at least one member');
  for (const m of members) if (m.kind !== 'reward') throw new Error(`a reward ensemble member must be a reward model, got a ${m.kind} model`);
  for (const [k, v] of Object.entries(covariates)) if (!Number.isFinite(v)) throw new Error(`covariate ${k}: λ must be a finite number, got ${v}`);
  if (needsReference(covariates) && !reference) throw new Error('a reward ensemble with a likelihood or relevance covariate needs the reference policy');
  if (covariates.echo && !questions) throw new Error('a reward ensemble with an echo covariate needs the question-word statistics');
  return {
    members,
    covariates,
    ...(reference ? { reference } : {}),
    ...(covariates.echo && questions ? { questions } : {}),
    dispose: () => members.forEach((m) => m.dispose()),
  };
}

/** Σ_k λ_k f_k(x, y) per item: the fixed part of every member's score. */
export function covariateOffsets(e: Pick<RewardEnsemble, 'covariates' | 'reference' | 'questions'>, tok: Tokenizer, items: readonly { prompt: readonly ChatMessage[]; reply: string }[]): number[] {
  const names = (Object.keys(e.covariates) as Covariate[]).filter((k) => e.covariates[k]);
  if (!names.length) return items.map(() => 0);
  return covariateFeatures(names, items, { reference: e.reference, tok, ...(e.questions ? { questions: e.questions } : {}) }).map((f) => f.reduce((s, x, k) => s + e.covariates[names[k]!]! * x, 0));
}

/** Per-reply mean and standard deviation across members. */
export interface ScoreSpread {
  mean: number;
  std: number;
}

/** Every member's scores of `items` (head + covariates): `[K][N]`. */
export function memberScores(e: RewardEnsemble, tok: Tokenizer, items: readonly { prompt: readonly ChatMessage[]; reply: string | readonly number[] }[], batchSize = 16): number[][] {
  const fixed = Object.values(e.covariates).some((v) => v) ? covariateOffsets(e, tok, items.map((it) => ({ prompt: it.prompt, reply: replyAsText(tok, it.reply) }))) : undefined;
  return e.members.map((m) => {
    const s = scoreExchanges(m, tok, items, batchSize);
    return fixed ? s.map((x, i) => x + fixed[i]!) : s;
  });
}

/** Mean and population std across members, per item. */
export function spreadOf(scores: readonly (readonly number[])[]): ScoreSpread[] {
  const K = scores.length;
  return scores[0]!.map((_, i) => {
    const m = scores.reduce((a, s) => a + s[i]!, 0) / K;
    const v = scores.reduce((a, s) => a + (s[i]! - m) ** 2, 0) / K;
    return { mean: m, std: Math.sqrt(v) };
  });
}

/**
 * The ensemble as PPO's reward: mean − k·std per reply, scoring the canonical re-encoding of the
 * reply TEXT plus `<|end|>` (never the sampled ids).
 *
 * @example
 *   const reward = new EnsembleRewardSource(ensemble, tok, { pessimism: 1, label: versionId });
 *   const [r] = await reward.score([{ prompt, reply: 'a banana', replyIds }]);
 */
export class EnsembleRewardSource implements RewardSource {
  readonly name: string;
  constructor(
    private readonly ensemble: RewardEnsemble,
    private readonly tok: Tokenizer,
    private readonly o: { pessimism: number; label?: string; batchSize?: number; lengthWeight?: number },
  ) {
    if (!(o.pessimism >= 0)) throw new Error(`pessimism must be a number ≥ 0, got ${o.pessimism}`);
    if (o.lengthWeight !== undefined && !(o.lengthWeight >= 0)) throw new Error(`lengthWeight must be a number ≥ 0, got ${o.lengthWeight}`);
    rewardEnsemble(ensemble.members, ensemble.covariates, ensemble.reference, ensemble.questions); // checks the members
    this.name = `reward-ensemble×${ensemble.members.length}${o.pessimism ? `(−${o.pessimism}σ)` : ''}${o.label ? `:${o.label}` : ''}`;
  }

  /** mean − k·std − (1 − w)·λ_length·words per item: what PPO optimises (w = `lengthWeight`, default 1). */
  async score(items: readonly RewardItem[]): Promise<number[]> {
    const off = (1 - (this.o.lengthWeight ?? 1)) * (this.ensemble.covariates.length ?? 0);
    const s = (await this.scoreSpread(items)).map((x, i) => x.mean - this.o.pessimism * x.std - (off ? off * replyWords(replyAsText(this.tok, items[i]!.reply)) : 0));
    s.forEach((x, i) => {
      if (!Number.isFinite(x)) throw new RewardError('reward_not_finite', `${this.name}: score ${i} is ${x}, not a finite number`);
    });
    return s;
  }

  /** Mean and std across members per item (the disagreement). */
  async scoreSpread(items: readonly RewardItem[]): Promise<ScoreSpread[]> {
    if (!items.length) return [];
    return spreadOf(memberScores(this.ensemble, this.tok, items.map((b) => ({ prompt: b.prompt, reply: b.reply })), this.o.batchSize ?? 16));
  }
}

/** Poisson(λ = 1) by Knuth's method. */
function poisson1(rng: Rng): number {
  const L = Math.exp(-1);
  let k = 0;
  let p = 1;
  do {
    k++;
    p *= rng();
  } while (p > L);
  return k - 1;
}

/**
 * Recency weights 0.5^(age/halfLife), age = the number of judgements strictly newer than this
 * one (so the newest is 1 and equal times weigh the same). Missing times count as newest.
 * `halfLife` 0 gives all 1.
 */
export function recencyWeights(createdAt: readonly (string | undefined)[], halfLife: number): number[] {
  if (!(halfLife > 0)) return createdAt.map(() => 1);
  const known = createdAt.filter((t): t is string => t !== undefined).sort().reverse(); // newest first
  const firstAt = new Map<string, number>();
  known.forEach((t, i) => firstAt.has(t) || firstAt.set(t, i));
  return createdAt.map((t) => (t === undefined ? 1 : 0.5 ** (firstAt.get(t)! / halfLife)));
}

/** Ensemble-mean accuracy on groups, per-member figures, and the mean std across members per reply. */
export function evaluateEnsemble(e: RewardEnsemble, tok: Tokenizer, groups: readonly PreferenceGroup[]): { ensemble: RewardEval; perMember: RewardEval[]; meanStd: number } {
  const paired = groups.filter((g) => g.pairs.length > 0);
  const items = paired.flatMap((g) => g.replies.map((reply) => ({ prompt: g.prompt, reply })));
  const scores = items.length ? memberScores(e, tok, items) : e.members.map(() => []);
  const deltasOf = (s: readonly number[]) => {
    const deltas: number[] = [];
    const weights: number[] = [];
    let at = 0;
    for (const g of paired) {
      for (const [w, l] of g.pairs) {
        deltas.push(s[at + w]! - s[at + l]!);
        weights.push(g.weight);
      }
      at += g.replies.length;
    }
    return pairStatistics(deltas, weights);
  };
  const spread = items.length ? spreadOf(scores) : [];
  return {
    ensemble: deltasOf(spread.map((x) => x.mean)),
    perMember: scores.map(deltasOf),
    meanStd: spread.length ? mean(spread.map((x) => x.std)) : NaN,
  };
}

export interface EnsembleTrainResult {
  ensemble: RewardEnsemble;
  /** The ensemble mean on the 'val' split. */
  heldOut: RewardEval;
  /** The ensemble mean on the fixed 'eval' split (comparable across rounds). */
  evalSet: RewardEval;
  /** Each member alone on the 'eval' split. */
  perMember: RewardEval[];
  /** Optimizer steps over all members. */
  steps: number;
  /** Mean over the 'eval' replies of the std across members. */
  meanStd: number;
  /** λ of the covariates (empty when none). */
  covariates: CovariateCoefs;
  /** Whether the heads were kept or zeroed by the 'val' judgements (`heads: 'auto'`). */
  heads: 'kept' | 'dropped';
  /** Judgements in each split (groups + unpaired). */
  splits: { train: number; val: number; eval: number };
  seconds: number;
}

/**
 * Trains K members on `data` (split by context; see the file comment), each warm-started from
 * `previous.members[j]` when given (from member j mod K' when the previous ensemble had K' < K
 * members; else from `sft` with a zero head). `previous` is left as is. The scores are not
 * normalised here: call {@link normaliseEnsemble} with SFT replies (e.g. `sampleReplies` on the
 * 'val' prompts of {@link splitPrompts}). Load data with `loadStorePreferences(store, { ties: true })`
 * so ties reach the loss.
 */
export function trainRewardEnsemble(o: { sft: GPT; previous?: RewardEnsemble; tok: Tokenizer; data: PreferenceData; cfg: Partial<EnsembleTrainConfig>; log?: (l: string) => void }): EnsembleTrainResult {
  const cfg: EnsembleTrainConfig = { ...ENSEMBLE_DEFAULTS, ...o.cfg };
  const log = o.log ?? ((l: string) => console.error(l));
  if (!(Number.isInteger(cfg.members) && cfg.members >= 1)) throw new Error(`members must be a positive integer, got ${cfg.members}`);
  const t0 = performance.now();
  const parts = splitPreferences(o.data);
  const { train } = parts;
  const times = [...o.data.groups.map((g) => g.createdAt), ...o.data.unpaired.map((u) => u.createdAt)];
  const rec = recencyWeights(times, cfg.recencyHalfLife);
  const recOf = new Map<object, number>();
  [...o.data.groups, ...o.data.unpaired].forEach((x, i) => recOf.set(x, rec[i]!));
  if (!parts.val.groups.some((g) => g.pairs.length > 0) && cfg.patience > 0) log(`reward ensemble: no val pairs among ${o.data.groups.length} judgements; early stopping is off this round`);
  if (!parts.eval.groups.some((g) => g.pairs.length > 0)) log('reward ensemble: no eval pairs yet; the eval accuracy is undefined this round');
  const { covariates, questions, scoreOffset } = fitCovariates(cfg.covariates, o.data, train.groups, train.groups.map((g) => recOf.get(g)!), o.sft, o.tok);
  if (cfg.covariates.length) log(`reward ensemble: covariates ${JSON.stringify(covariates)} (a Bradley–Terry fit of ${train.groups.length} train judgements on them alone); the heads learn the rest`);
  const members: GPT[] = [];
  let steps = 0;
  try {
    for (let j = 0; j < cfg.members; j++) {
      const prev = o.previous?.members[j % o.previous.members.length];
      if (prev && JSON.stringify(prev.config) !== JSON.stringify(o.sft.config)) throw new Error('the previous reward ensemble has another model config than the SFT trunk');
      const rm = prev ? prev.clone('reward') : o.sft.clone('reward');
      members.push(rm);
      const rng = createRng(cfg.seed * 7919 + j);
      const boot = cfg.bootstrap && cfg.members > 1 ? () => poisson1(rng) : () => 1;
      const groupWeights = train.groups.map((g) => boot() * recOf.get(g)!);
      const unpairedWeights = train.unpaired.map((u) => boot() * recOf.get(u)!);
      const r = trainRewardModel({
        rm,
        tok: o.tok,
        train,
        val: parts.val.groups,
        groupWeights,
        unpairedWeights,
        cfg: {
          epochs: cfg.epochs,
          groupsPerBatch: cfg.groupsPerBatch,
          unpairedPerBatch: cfg.unpairedPerBatch,
          unpairedCoef: cfg.unpairedCoef,
          lr: cfg.lr,
          minLr: cfg.lr / 10,
          warmup: 5,
          weightDecay: 0,
          gradClip: 1,
          seed: cfg.seed + j,
          tieWeight: cfg.tieWeight,
          margin: cfg.margin,
          patience: cfg.patience,
          evalEvery: cfg.evalEvery,
          scoreOffset,
        },
        log: (l) => log(`member ${j + 1}/${cfg.members}: ${l}`),
      });
      steps += r.steps;
    }
  } catch (err) {
    members.forEach((m) => m.dispose());
    throw err;
  }
  const ensemble = rewardEnsemble(members, covariates, needsReference(covariates) ? o.sft : undefined, questions);
  let val = evaluateEnsemble(ensemble, o.tok, parts.val.groups);
  let heads: 'kept' | 'dropped' = 'kept';
  if (cfg.heads === 'auto' && scoreOffset) {
    const alone = covariateEval(parts.val.groups, scoreOffset);
    if (alone.pairs > 0 && alone.loss < val.ensemble.loss) {
      log(`reward ensemble: the covariates alone fit the val judgements better (loss ${alone.loss.toFixed(4)} against ${val.ensemble.loss.toFixed(4)} with the heads, ${alone.pairs} pairs): heads dropped`);
      for (const m of members) tf.tidy(() => ['score.w', 'score.b'].forEach((n) => m.params.get(n)!.assign(tf.zerosLike(m.params.get(n)!))));
      heads = 'dropped';
      val = evaluateEnsemble(ensemble, o.tok, parts.val.groups);
    } else if (alone.pairs > 0) {
      log(`reward ensemble: the heads fit the val judgements better (loss ${val.ensemble.loss.toFixed(4)} against ${alone.loss.toFixed(4)} for the covariates alone, ${alone.pairs} pairs): heads kept`);
    }
  }
  const ev = evaluateEnsemble(ensemble, o.tok, parts.eval.groups);
  const count = (d: PreferenceData) => d.groups.length + d.unpaired.length;
  const seconds = (performance.now() - t0) / 1000;
  const result: EnsembleTrainResult = {
    ensemble,
    heldOut: val.ensemble,
    evalSet: ev.ensemble,
    perMember: ev.perMember,
    steps,
    meanStd: ev.meanStd,
    covariates,
    heads,
    splits: { train: count(parts.train), val: count(parts.val), eval: count(parts.eval) },
    seconds,
  };
  log(
    `reward ensemble: K=${cfg.members}, ${steps} steps in ${seconds.toFixed(1)} s; eval accuracy ${ev.ensemble.accuracy.toFixed(3)} over ${ev.ensemble.pairs} pairs ` +
      `(members ${ev.perMember.map((m) => m.accuracy.toFixed(3)).join(', ')}), val loss ${val.ensemble.loss.toFixed(4)}, mean std ${ev.meanStd.toFixed(4)}`,
  );
  return result;
}

/** Accuracy and loss on `groups` of the score Σ λ f alone (the covariates' part of every member). */
function covariateEval(groups: readonly PreferenceGroup[], scoreOffset: (prompt: readonly ChatMessage[], reply: string) => number): RewardEval {
  const deltas: number[] = [];
  const weights: number[] = [];
  for (const g of groups) {
    for (const [w, l] of g.pairs) {
      deltas.push(scoreOffset(g.prompt, g.replies[w]!) - scoreOffset(g.prompt, g.replies[l]!));
      weights.push(g.weight);
    }
  }
  return pairStatistics(deltas, weights);
}

/**
 * λ of `names` fitted on the train groups (weights `omega`), and the fixed score part Σ λ f of
 * every reply of `data` (features computed once, in batches; the likelihood under `reference`;
 * echo's word weights from the questions of all of `data`, which are inputs, not labels).
 */
function fitCovariates(names: readonly Covariate[], data: PreferenceData, train: readonly PreferenceGroup[], omega: readonly number[], reference: GPT, tok: Tokenizer): { covariates: CovariateCoefs; questions?: QuestionWords; scoreOffset?: (prompt: readonly ChatMessage[], reply: string) => number } {
  if (!names.length) return { covariates: {} };
  const questions = names.includes('echo') ? questionWords([...data.groups.map((g) => g.prompt), ...data.unpaired.map((u) => u.prompt)]) : undefined;
  const key = (prompt: readonly ChatMessage[], reply: string) => `${promptText(prompt)}\u0000${reply}`;
  const items = new Map<string, { prompt: readonly ChatMessage[]; reply: string }>();
  for (const g of data.groups) for (const reply of g.replies) items.set(key(g.prompt, reply), { prompt: g.prompt, reply });
  for (const u of data.unpaired) items.set(key(u.prompt, u.reply), { prompt: u.prompt, reply: u.reply });
  const list = [...items.values()];
  const feats = covariateFeatures(names, list, { reference, tok, ...(questions ? { questions } : {}) });
  const featOf = new Map(list.map((it, i) => [key(it.prompt, it.reply), feats[i]!]));
  const lambda = fitCovariateCoefs(train, train.map((g) => g.replies.map((r) => featOf.get(key(g.prompt, r))!)), omega);
  const covariates: CovariateCoefs = Object.fromEntries(names.map((n, k) => [n, lambda[k]!]));
  const offsetOf = new Map([...featOf].map(([k, f]) => [k, f.reduce((s, x, i) => s + lambda[i]! * x, 0)]));
  return {
    covariates,
    ...(questions ? { questions } : {}),
    scoreOffset: (prompt, reply) => {
      const v = offsetOf.get(key(prompt, reply));
      if (v === undefined) throw new Error('covariates: a reply outside the data the features were computed for');
      return v;
    },
  };
}

/**
 * Shifts every member's head bias so `replies` (SFT samples) average 0 for each member; returns
 * the shifts and the std of the ensemble mean over those replies.
 */
export function normaliseEnsemble(e: RewardEnsemble, tok: Tokenizer, replies: readonly { prompt: readonly ChatMessage[]; reply: string | readonly number[] }[]): { scoreOffsets: number[]; sftScoreStd: number } {
  const scores = memberScores(e, tok, replies);
  const scoreOffsets = scores.map((s) => mean(s));
  e.members.forEach((m, j) => {
    const b = m.params.get('score.b')!;
    tf.tidy(() => b.assign(tf.sub(b, scoreOffsets[j]!)));
  });
  const means = spreadOf(scores).map((x) => x.mean); // the shift does not change their spread
  const mu = mean(means);
  return { scoreOffsets, sftScoreStd: Math.sqrt(mean(means.map((x) => (x - mu) ** 2))) };
}

const PREFIX = 'member.';

/** What {@link saveRewardEnsemble} records beside the weights. */
export interface EnsembleSaveMeta {
  tokenizer: Tokenizer;
  parent: string | null;
  step: number;
  metrics?: Record<string, number>;
  runConfig?: Record<string, unknown>;
}

/** Saves the ensemble as one checkpoint directory (atomic, sha256-verified on load). */
export function saveRewardEnsemble(dir: string, e: RewardEnsemble, meta: EnsembleSaveMeta): CheckpointMeta {
  const weights = new Map<string, { data: Float32Array; shape: number[] }>();
  e.members.forEach((m, j) => {
    for (const [name, p] of m.params) weights.set(`${PREFIX}${j}.${name}`, { data: p.dataSync() as Float32Array, shape: p.shape });
  });
  return saveCheckpoint(dir, {
    weights,
    meta: {
      stage: 'reward',
      kind: 'reward',
      config: e.members[0]!.config,
      tokenizerFingerprint: meta.tokenizer.fingerprint(),
      parent: meta.parent,
      step: meta.step,
      metrics: { ...meta.metrics, members: e.members.length, ...Object.fromEntries(Object.entries(e.covariates).map(([k, v]) => [`covariate_${k}`, v])) },
      runConfig: { ...meta.runConfig, ensemble: 'reward-ensemble/1', ...(e.questions ? { questionWords: e.questions } : {}) },
    },
    tokenizer: meta.tokenizer.toJSON(),
  });
}

/** The covariate weights λ a saved ensemble's meta carries (`covariate_<name>` metrics). */
export function savedCovariates(meta: Pick<CheckpointMeta, 'metrics'>): CovariateCoefs {
  return Object.fromEntries(COVARIATES.flatMap((k) => (meta.metrics[`covariate_${k}`] ? [[k, meta.metrics[`covariate_${k}`]!]] : [])));
}

/**
 * Loads an ensemble saved by {@link saveRewardEnsemble} (or a single reward checkpoint as K = 1);
 * one with a likelihood or relevance covariate needs its `reference` policy (SFT).
 */
export function loadRewardEnsemble(dir: string, tok: Tokenizer, reference?: GPT): { ensemble: RewardEnsemble; meta: CheckpointMeta } {
  const ck = loadCheckpoint(dir, { kind: 'reward', tokenizerFingerprint: tok.fingerprint() });
  const covariates = savedCovariates(ck.meta);
  if (needsReference(covariates) && !reference) throw new CheckpointError('checkpoint_corrupt', `${dir}: this reward ensemble scores the reference likelihood; load it with the reference policy`);
  const ref = needsReference(covariates) ? reference : undefined;
  const saved = (ck.meta.runConfig as Record<string, unknown> | undefined)?.questionWords;
  if (covariates.echo && !isQuestionWords(saved)) throw new CheckpointError('checkpoint_corrupt', `${dir}: this reward ensemble scores the echo covariate but meta.json has no valid question-word statistics`);
  const questions = covariates.echo ? (saved as QuestionWords) : undefined;
  if (ck.weights.has('wte')) return { ensemble: rewardEnsemble([GPT.fromWeights(ck.meta.config, 'reward', ck.weights)], covariates, ref, questions), meta: ck.meta };
  const K = ck.meta.metrics.members;
  if (!(Number.isInteger(K) && K! >= 1)) throw new CheckpointError('checkpoint_corrupt', `${dir}: meta.json has no member count for a reward ensemble`);
  const members: GPT[] = [];
  try {
    for (let j = 0; j < K!; j++) {
      const w = new Map<string, Float32Array>();
      const p = `${PREFIX}${j}.`;
      for (const [name, data] of ck.weights) if (name.startsWith(p)) w.set(name.slice(p.length), data);
      members.push(GPT.fromWeights(ck.meta.config, 'reward', w));
    }
  } catch (err) {
    members.forEach((m) => m.dispose());
    throw new CheckpointError('checkpoint_corrupt', `${dir}: ${(err as Error).message}`);
  }
  return { ensemble: rewardEnsemble(members, covariates, ref, questions), meta: ck.meta };
}
