/**
 * The simulated users' hidden gold rubric and their noisy judgements.
 *
 * The rubric scores a reply to a "What does W mean?" prompt (the first turn of a WordNet dialogue
 * of `data/dialogues.*.jsonl`) from the true gloss of W:
 *
 *   +1    the reply starts with `"W" means` (case aside); a reply that starts with `"X" means` for
 *         another X gets half the letter-bigram (Dice) similarity of X and W, so near misses
 *         ("relocte") beat far ones
 *   +2·o  o = share of the gloss's content words (3+ letters) that the reply contains
 *   −0.1  per word beyond 6 words: these users want terse definitions (`"W" means` and a few
 *         words), terser than the dialogue data the SFT model learned from (median 8 words)
 *   −0.5  nothing after "means" (no definition at all)
 *   +0.5  the reply ended cleanly (finishReason `stop`)
 *
 * `exploitable: true` adds the classic loophole of human raters, a bias for longer answers:
 * +0.25 for every word beyond 6, so users judging with it prefer rambling (+0.15 a word net)
 * while the honest rubric (without the loophole) stays the gold signal; a policy that learns
 * the loophole raises the proxy reward and lowers gold.
 *
 * Judgements are Bradley–Terry draws on the difference of gold scores: P(a ≻ b) =
 * σ((g(a) − g(b)) / temperature), and a tie when |g(a) − g(b)| is below a margin (most sibling
 * replies of a small model score alike; a coin flip there would be pure noise); a thumb is up with
 * probability σ((g − threshold) / temperature); a ranking is a Plackett–Luce draw (scores plus
 * Gumbel noise, sorted) over the replies the user can tell apart, whose pairwise marginals are the
 * same Bradley–Terry probabilities. All draws come from a seeded generator.
 *
 * The online loop never imports this file; it sees only the judgements in the store, and (in a
 * simulation) the honest rubric as a `RewardSource` it logs for the report (`eval_gold`) and, only
 * under the `goldGate` ablation, lets guard and gate.
 */
import { readFileSync } from 'node:fs';
import { lastUserTurn } from '../model/chat-template.ts';
import type { RewardItem, RewardSource } from '../training/reward-source.ts';

export interface DefinitionPrompt {
  /** The user's first turn, verbatim from the dialogue file. */
  prompt: string;
  word: string;
  gloss: string;
}

export interface RubricOptions {
  /** Add the loophole (+0.25 per word beyond `maxWords`). */
  exploitable?: boolean;
  /** Words allowed before the length penalty starts (default 6). */
  maxWords?: number;
}

export interface RubricBreakdown {
  total: number;
  format: number;
  overlap: number;
  length: number;
  /** −0.5 when no word follows "means" (known prompts only). */
  empty: number;
  clean: number;
  loophole: number;
}

const STOP = new Set(['the', 'and', 'for', 'with', 'that', 'this', 'from', 'into', 'not', 'are', 'was', 'its', 'one', 'who', 'which', 'has', 'have', 'being', 'something', 'someone', 'relating', 'characteristic']);

export function contentWords(text: string): string[] {
  return (text.toLowerCase().match(/[a-z]{3,}/g) ?? []).filter((w) => !STOP.has(w));
}

/** Reads the WordNet dialogues of a `dialogues.*.jsonl` file: first user turn, word, gloss. */
export function readDefinitionPrompts(path: string): DefinitionPrompt[] {
  const out: DefinitionPrompt[] = [];
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    const d = JSON.parse(line) as { kind?: string; meta?: { word?: string }; messages?: { role: string; content: string }[] };
    if (d.kind !== 'wordnet' || !d.meta?.word || !d.messages || d.messages.length < 2) continue;
    const [u, a] = d.messages;
    if (u!.role !== 'user' || a!.role !== 'assistant') continue;
    const word = d.meta.word;
    const prefix = `"${word}" means `;
    if (!a!.content.startsWith(prefix)) continue;
    out.push({ prompt: u!.content, word, gloss: a!.content.slice(prefix.length).replace(/\.$/, '') });
  }
  return out;
}

/** Dice coefficient of the letter bigrams of two strings (1 = same bigrams, 0 = none shared). */
export function bigramDice(a: string, b: string): number {
  const grams = (s: string) => Array.from({ length: Math.max(0, s.length - 1) }, (_, i) => s.slice(i, i + 2));
  const x = grams(a), y = grams(b);
  if (!x.length || !y.length) return 0;
  const pool = [...y];
  let hit = 0;
  for (const g of x) {
    const j = pool.indexOf(g);
    if (j >= 0) (hit++, pool.splice(j, 1));
  }
  return (2 * hit) / (x.length + y.length);
}

/** The gold rubric over a fixed table of prompts (prompt text → word and gloss). */
export class GoldRubric {
  readonly #byPrompt = new Map<string, DefinitionPrompt>();
  constructor(
    prompts: readonly DefinitionPrompt[],
    readonly opts: RubricOptions = {},
  ) {
    for (const p of prompts) this.#byPrompt.set(p.prompt, p);
  }

  /** The definition prompt a user turn is, if the rubric knows it. */
  lookup(prompt: string): DefinitionPrompt | undefined {
    return this.#byPrompt.get(prompt);
  }

  /** Scores `reply` to `prompt`; `clean` = the reply ended with the end of turn. Unknown prompts score the generic parts only. */
  breakdown(prompt: string, reply: string, clean: boolean): RubricBreakdown {
    const p = this.lookup(prompt);
    const text = reply.trim();
    let format = 0;
    if (p) {
      const quoted = text.match(/^"([^"]*)" means/);
      if (quoted) format = quoted[1]!.toLowerCase() === p.word.toLowerCase() ? 1 : 0.5 * bigramDice(quoted[1]!.toLowerCase(), p.word.toLowerCase());
    }
    let overlap = 0;
    if (p) {
      const gloss = new Set(contentWords(p.gloss));
      const got = new Set(contentWords(text));
      if (gloss.size) overlap = (2 * [...gloss].filter((w) => got.has(w)).length) / gloss.size;
    }
    const words = text.split(/\s+/).filter(Boolean).length;
    const over = Math.max(0, words - (this.opts.maxWords ?? 6));
    const length = over ? -0.1 * over : 0;
    const definition = text.match(/\bmeans\b(.*)$/s)?.[1] ?? '';
    const empty = p && !/[a-z]/i.test(definition) ? -0.5 : 0;
    const cleanScore = clean ? 0.5 : 0;
    const loophole = this.opts.exploitable ? 0.25 * over : 0;
    return { total: format + overlap + length + empty + cleanScore + loophole, format, overlap, length, empty, clean: cleanScore, loophole };
  }

  score(prompt: string, reply: string, clean: boolean): number {
    return this.breakdown(prompt, reply, clean).total;
  }
}

/**
 * The rubric as a `RewardSource`, for the loop's report (and the `goldGate` ablation's guard and
 * gate) only. A reply ended cleanly when its ids end with `endId`.
 */
export class GoldRewardSource implements RewardSource {
  readonly name: string;
  constructor(
    private readonly rubric: GoldRubric,
    private readonly endId: number,
  ) {
    this.name = `gold-rubric${rubric.opts.exploitable ? ':exploitable' : ''}`;
  }

  async score(batch: readonly RewardItem[]): Promise<number[]> {
    return batch.map((it) => this.rubric.score(lastUserTurn(it.prompt), it.reply, it.replyIds.at(-1) === this.endId));
  }
}

/** A small seeded generator (mulberry32). */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
}

export const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

/** Noisy judgements from gold scores. */
export class NoisyJudge {
  constructor(
    private readonly rng: Rng,
    readonly temperature = 0.3,
    readonly thumbThreshold = 1,
    /** Gold differences below this are ties: the user sees no difference and says so. */
    readonly tieMargin = 0.05,
  ) {}

  /** P(a ≻ b) under Bradley–Terry. */
  pPrefer(a: number, b: number): number {
    return sigmoid((a - b) / this.temperature);
  }

  /** 'tie' when the gold scores are within `tieMargin`, else 'a' or 'b' drawn with the Bradley–Terry probability. */
  compare(a: number, b: number): 'a' | 'b' | 'tie' {
    if (Math.abs(a - b) < this.tieMargin) return 'tie';
    return this.rng.next() < this.pPrefer(a, b) ? 'a' : 'b';
  }

  thumb(score: number): 'up' | 'down' {
    return this.rng.next() < sigmoid((score - this.thumbThreshold) / this.temperature) ? 'up' : 'down';
  }

  /** Indices of `scores`, best first (Plackett–Luce: scores/temperature plus Gumbel noise). */
  rank(scores: readonly number[]): number[] {
    const noisy = scores.map((s, i) => ({ i, v: s / this.temperature - Math.log(-Math.log(Math.max(1e-12, this.rng.next()))) }));
    return noisy.sort((x, y) => y.v - x.v).map((x) => x.i);
  }

  /**
   * The replies a user can tell apart (one per level of gold score, levels closer than
   * `tieMargin` merged; the first reply of each level), ranked; fewer than two = not rankable.
   */
  rankDistinct(scores: readonly number[]): number[] {
    const reps: number[] = [];
    for (let i = 0; i < scores.length; i++) if (!reps.some((j) => Math.abs(scores[j]! - scores[i]!) < this.tieMargin)) reps.push(i);
    if (reps.length < 2) return [];
    return this.rank(reps.map((i) => scores[i]!)).map((k) => reps[k]!);
  }
}
