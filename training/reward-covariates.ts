/**
 * Covariates of the reward: generic features of a reply whose weights are fitted on the users'
 * judgements by a Bradley–Terry model with those features alone,
 *
 *   P(y_w ≻ y_l) = σ(Σ_k λ_k · (f_k(x, y_w) − f_k(x, y_l))),
 *
 *   f_length(x, y)     = words of y (feedback/reply-words.ts, as the arena's length control counts);
 *   f_likelihood(x, y) = mean log-probability per token of y (its canonical encoding and the
 *                        closing `<|end|>`) under the reference policy (SFT), at temperature 1;
 *   f_tail(x, y)       = mean log-probability of y's ⌈20%⌉ least likely tokens under the
 *                        reference (Min-K% Prob, Shi et al. 2023): one misspelt or garbled word
 *                        in a short reply moves it far more than it moves the mean;
 *   f_relevance(x, y)  = f_likelihood(x, y) − f_likelihood(x∅, y), x∅ = x with its last user
 *                        turn emptied: the pointwise mutual information per token between the
 *                        question and the reply under the reference (MMI, Li et al. 2016), how
 *                        much the reply depends on what was asked (a reply that repeats the
 *                        asked word gains; a generic or garbled one does not);
 *   f_echo(x, y)       = the IDF-weighted share of the distinct words (3+ letters or digits)
 *                        of x's last user turn that y repeats verbatim, Σ_{w∈q∩y} idf(w) /
 *                        Σ_{w∈q} idf(w), idf(w) = ln((N + 1) / (df(w) + 1)) over the N user turns
 *                        of the judgements the λ are fitted on: the query-term coverage of
 *                        retrieval and answer ranking. Words of every question ("what", "does")
 *                        weigh about 0, so a reply that parrots the question scores no more
 *                        than one that names the asked thing. Lexical, so it sees what the
 *                        models do not: a reply that names the asked thing exactly against one
 *                        that garbles it by a letter (equally likely, token by token, to a small
 *                        model);
 *
 * maximised over the pairs (ties with target ½) with the reward model's weights, by Newton's
 * method. The reward model then scores r(x, y) = q(x, y) + Σ_k λ_k f_k(x, y) with λ fixed, so
 * its head q is trained on what the covariates do not explain (the residual).
 *
 * Why: a small reward model learns the easiest feature of its data, reply length, and little
 * else (measured: it ranks replies that differ in length 95% right and those that differ in
 * spelling the asked word at chance). With length one fitted number, the head's gradient goes to
 * the rest. And what the head does not learn, the reference likelihood may carry: a garbled
 * or misspelled reply is an unlikely one, and whether users prefer likely replies, and how much,
 * is what λ_likelihood measures on their judgements (0 if they do not care).
 *
 * From the field: Chatbot Arena's style control (length as a covariate of the Bradley–Terry fit)
 * moved into the reward, and a fixed-λ variant of ODIN (Chen et al. 2024: a length head beside a
 * quality head). The optimiser may weigh length apart (`lengthWeight` of EnsembleRewardSource).
 */
import type { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { lastUserTurn, type ChatMessage } from '../model/chat-template.ts';
import type { PreferenceGroup } from './preferences.ts';
import { replyWords } from '../feedback/reply-words.ts';
import { encodeExchange } from './rlhf-common.ts';
import { replyLogProbs } from './ppo.ts';
import type { Covariate } from './covariate-sets.ts';

export { COVARIATES, COVARIATE_SETS, covariatesOf, needsReference, type Covariate, type CovariateCoefs, type CovariateSet } from './covariate-sets.ts';

/** A tiny ridge: λ stays finite when the pairs separate, and is 0 for a feature that never differs. */
const RIDGE = 1e-6;

/**
 * λ of the Bradley–Terry model on the features alone, fitted on `groups`: `features[g][i]` is
 * reply i of group g's feature vector (K numbers); each pair and tie weighs `omega[g] · weight`
 * (omega defaults to 1). Zeros with no pair or tie.
 */
export function fitCovariateCoefs(groups: readonly PreferenceGroup[], features: readonly (readonly (readonly number[])[])[], omega?: readonly number[]): number[] {
  const K = features.find((f) => f.length)?.[0]?.length ?? 0;
  const d: number[][] = [];
  const y: number[] = [];
  const w: number[] = [];
  groups.forEach((g, i) => {
    const om = (omega?.[i] ?? 1) * g.weight;
    if (!(om > 0)) return;
    const f = features[i]!;
    const diff = (a: number, b: number) => f[a]!.map((x, k) => x - f[b]![k]!);
    for (const [a, b] of g.pairs) (d.push(diff(a, b)), y.push(1), w.push(om));
    for (const [a, b] of g.ties ?? []) (d.push(diff(a, b)), y.push(0.5), w.push(om));
  });
  let lambda = new Array<number>(K).fill(0);
  if (!d.length || !K) return lambda;
  // Fitted on differences scaled to unit RMS (so the ridge means the same for every unit), then unscaled.
  const scale = lambda.map((_, k) => Math.sqrt(d.reduce((s, x) => s + x[k]! * x[k]!, 0) / d.length) || 1);
  for (const x of d) x.forEach((v, k) => (x[k] = v / scale[k]!));
  const wsum = w.reduce((s, x) => s + x, 0);
  for (let iter = 0; iter < 100; iter++) {
    const grad = lambda.map((l) => -RIDGE * l);
    const info = Array.from({ length: K }, (_, a) => Array.from({ length: K }, (_, b) => (a === b ? RIDGE : 0)));
    for (let i = 0; i < d.length; i++) {
      const z = d[i]!.reduce((s, x, k) => s + x * lambda[k]!, 0);
      const p = 1 / (1 + Math.exp(-z));
      const c = w[i]! / wsum;
      for (let a = 0; a < K; a++) {
        grad[a]! += c * (y[i]! - p) * d[i]![a]!;
        for (let b = 0; b < K; b++) info[a]![b]! += c * p * (1 - p) * d[i]![a]! * d[i]![b]!;
      }
    }
    const step = solve(info, grad);
    // A bounded step: the log-likelihood is concave, but Newton may overshoot from 0.
    const size = Math.max(...step.map(Math.abs));
    const t = size > 1 ? 1 / size : 1;
    step.forEach((s, k) => (lambda[k]! += t * s));
    if (size < 1e-10) break;
  }
  lambda = lambda.map((l, k) => l / scale[k]!);
  return lambda;
}

/** Solves A x = b (A symmetric positive definite, small) by Gaussian elimination with pivoting. */
function solve(A: readonly (readonly number[])[], b: readonly number[]): number[] {
  const n = b.length;
  const m = A.map((row, i) => [...row, b[i]!]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r]![c]!) > Math.abs(m[p]![c]!)) p = r;
    [m[c], m[p]] = [m[p]!, m[c]!];
    for (let r = c + 1; r < n; r++) {
      const f = m[r]![c]! / m[c]![c]!;
      for (let k = c; k <= n; k++) m[r]![k]! -= f * m[c]![k]!;
    }
  }
  const x = new Array<number>(n).fill(0);
  for (let r = n - 1; r >= 0; r--) {
    let s = m[r]![n]!;
    for (let k = r + 1; k < n; k++) s -= m[r]![k]! * x[k]!;
    x[r] = s / m[r]![r]!;
  }
  return x;
}

/** Log-probability of each token of each reply (canonical encoding + `<|end|>`) under `reference` at temperature 1. */
export function referenceTokenLogProbs(reference: GPT, tok: Tokenizer, items: readonly { prompt: readonly ChatMessage[]; reply: string }[], batchSize = 32): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < items.length; i += batchSize) {
    const eps = items.slice(i, i + batchSize).map((it) => {
      const x = encodeExchange(tok, it.prompt, it.reply, reference.config.blockSize);
      return { prompt: [...it.prompt], promptIds: x.ids.slice(0, x.replyStart), replyIds: x.ids.slice(x.replyStart), reply: it.reply, finishReason: 'stop' as const };
    });
    out.push(...replyLogProbs(reference, tok, eps, 1));
  }
  return out;
}

const meanOf = (lp: readonly number[]): number => (lp.length ? lp.reduce((a, b) => a + b, 0) / lp.length : 0);

/** The share of a reply's least likely tokens that f_tail averages (Min-K% Prob). */
export const TAIL_SHARE = 0.2;

/** Mean of the ⌈20%⌉ lowest of `lp` (0 for none). */
export function tailOf(lp: readonly number[]): number {
  if (!lp.length) return 0;
  const k = Math.max(1, Math.ceil(TAIL_SHARE * lp.length));
  return meanOf([...lp].sort((a, b) => a - b).slice(0, k));
}

/** Mean log-probability per token of each reply (canonical encoding + `<|end|>`) under `reference` at temperature 1. */
export function referenceLikelihood(reference: GPT, tok: Tokenizer, items: readonly { prompt: readonly ChatMessage[]; reply: string }[], batchSize = 32): number[] {
  return referenceTokenLogProbs(reference, tok, items, batchSize).map(meanOf);
}

/** `prompt` with its last user turn emptied (the context of f_relevance's second term). */
export function withoutQuestion(prompt: readonly ChatMessage[]): ChatMessage[] {
  const last = prompt.map((m) => m.role).lastIndexOf('user');
  return prompt.map((m, i) => (i === last ? { ...m, content: '' } : m));
}

/** The distinct words of `text`: runs of 3+ letters or digits, lower case. */
function wordSet(text: string): Set<string> {
  return new Set(text.toLowerCase().match(/[\p{L}\p{N}]{3,}/gu) ?? []);
}

/**
 * The document frequencies f_echo weighs words by: of `questions` user turns, how many hold each
 * word. Only words of two or more questions are kept (the most frequent {@link QUESTION_WORDS_KEPT});
 * every other word counts as in one.
 */
export interface QuestionWords {
  questions: number;
  df: Readonly<Record<string, number>>;
}

/** The most words a {@link QuestionWords} keeps (it is saved with the reward model). */
export const QUESTION_WORDS_KEPT = 20_000;

/** The question-word statistics of the last user turns of `prompts` (each distinct conversation once). */
export function questionWords(prompts: Iterable<readonly ChatMessage[]>): QuestionWords {
  const seen = new Set<string>();
  const df = new Map<string, number>();
  for (const p of prompts) {
    const q = lastUserTurn(p);
    const key = JSON.stringify(p);
    if (seen.has(key)) continue;
    seen.add(key);
    for (const w of wordSet(q)) df.set(w, (df.get(w) ?? 0) + 1);
  }
  const kept = [...df].filter(([, n]) => n >= 2).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, QUESTION_WORDS_KEPT);
  return { questions: seen.size, df: Object.fromEntries(kept) };
}

/** idf(w) = ln((N + 1) / (df(w) + 1)): about 0 for a word of every question, the most for a rare one. */
export function idfOf(words: QuestionWords, w: string): number {
  return Math.log((words.questions + 1) / ((words.df[w] ?? 1) + 1));
}

/** Whether `x` is a well-formed {@link QuestionWords} (as read back from a checkpoint). */
export function isQuestionWords(x: unknown): x is QuestionWords {
  const q = x as QuestionWords;
  return typeof q === 'object' && q !== null && Number.isInteger(q.questions) && q.questions >= 0 && typeof q.df === 'object' && q.df !== null && Object.values(q.df).every((n) => Number.isInteger(n) && n >= 1);
}

/** f_echo: the IDF-weighted share of the words of `prompt`'s last user turn that `reply` repeats (0 when they weigh nothing). */
export function echoOf(prompt: readonly ChatMessage[], reply: string, words: QuestionWords): number {
  const said = wordSet(reply);
  let asked = 0;
  let hit = 0;
  for (const w of wordSet(lastUserTurn(prompt))) {
    const idf = idfOf(words, w);
    asked += idf;
    if (said.has(w)) hit += idf;
  }
  return asked > 0 ? hit / asked : 0;
}

/**
 * The covariates' feature vectors of `items` (in the order of `names`); likelihood, relevance and
 * tail need the reference policy, echo the question-word statistics.
 */
export function covariateFeatures(names: readonly Covariate[], items: readonly { prompt: readonly ChatMessage[]; reply: string }[], o: { reference?: GPT; tok: Tokenizer; questions?: QuestionWords }): number[][] {
  let tokens: number[][] | undefined;
  const reference = (): GPT => o.reference ?? (() => { throw new Error(`the ${names.filter((n) => n !== 'length' && n !== 'echo').join(' and ')} covariate needs the reference policy`); })();
  const columns = names.map((n) => {
    if (n === 'length') return items.map((it) => replyWords(it.reply));
    if (n === 'echo') {
      const q = o.questions ?? (() => { throw new Error('the echo covariate needs the question-word statistics'); })();
      return items.map((it) => echoOf(it.prompt, it.reply, q));
    }
    tokens ??= referenceTokenLogProbs(reference(), o.tok, items);
    if (n === 'tail') return tokens.map(tailOf);
    const likelihood = tokens.map(meanOf);
    if (n === 'likelihood') return likelihood;
    const blind = referenceLikelihood(reference(), o.tok, items.map((it) => ({ prompt: withoutQuestion(it.prompt), reply: it.reply })));
    return likelihood.map((l, i) => l - blind[i]!);
  });
  return items.map((_, i) => columns.map((c) => c[i]!));
}
