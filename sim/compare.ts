/**
 * The final comparison of the story: two servers (the champion's and one on the SFT checkpoint)
 * answer the same held-out prompts with the same seeds, `samples` replies a prompt, over the
 * public WebSocket protocol; the honest rubric scores every reply. Returns, per prompt, the paired
 * gold scores and reply lengths, and the mean rubric parts of each side.
 */
import { WsClient, type ReplyMessage } from '../client/ws-client.ts';
import type { Sampling } from '../server/ws-protocol.ts';
import type { DefinitionPrompt, GoldRubric } from './gold-rubric.ts';

/** Mean rubric parts of a set of replies (and their mean length in words). */
export type RubricParts = Record<'format' | 'overlap' | 'length' | 'empty' | 'clean' | 'words', number>;
export const PART_NAMES = ['format', 'overlap', 'length', 'empty', 'clean'] as const;

export interface PromptSamples {
  prompt: string;
  /** Gold scores of side A's and side B's replies, sample k with seed `seedBase + i·samples + k` on both sides. */
  goldA: number[];
  goldB: number[];
  /** Reply lengths in words. */
  wordsA: number[];
  wordsB: number[];
}

export interface Comparison {
  prompts: PromptSamples[];
  partsA: RubricParts;
  partsB: RubricParts;
  /** The versions that decoded A's and B's replies (one each, or the comparison is refused). */
  versionA: string;
  versionB: string;
}

export const words = (text: string): number => text.trim().split(/\s+/).filter(Boolean).length;

/** Runs the comparison with `lanes` prompts in flight on each side. */
export async function compareServers(a: string, b: string, prompts: readonly DefinitionPrompt[], rubric: GoldRubric, o: { params: Sampling; samples?: number; seedBase?: number; lanes?: number }): Promise<Comparison> {
  const samples = Math.max(1, o.samples ?? 4);
  const seedBase = o.seedBase ?? 1000;
  const lanes = Math.max(1, o.lanes ?? 4);
  const [sa, sb] = await Promise.all([WsClient.connect(a), WsClient.connect(b)]);
  const zero = (): RubricParts => ({ format: 0, overlap: 0, length: 0, empty: 0, clean: 0, words: 0 });
  const partsA = zero(), partsB = zero();
  const versions = [new Set<string>(), new Set<string>()] as const;
  const n = prompts.length * samples;
  const score = (into: RubricParts, prompt: string, r: ReplyMessage): number => {
    const br = rubric.breakdown(prompt, r.content, r.finishReason === 'stop');
    for (const k of PART_NAMES) into[k] += br[k] / n;
    into.words += words(r.content) / n;
    return br.total;
  };
  const out: PromptSamples[] = prompts.map((p) => ({ prompt: p.prompt, goldA: [], goldB: [], wordsA: [], wordsB: [] }));
  try {
    await Promise.all(Array.from({ length: lanes }, async (_, lane) => {
      for (let i = lane; i < prompts.length; i += lanes) {
        const p = prompts[i]!;
        for (let k = 0; k < samples; k++) {
          // Every sample is the first turn of a new conversation, with the same seed on both sides.
          const params = { ...o.params, seed: seedBase + i * samples + k };
          const [ra, rb] = await Promise.all([sa, sb].map(async (c) => c.say((await c.start({ userId: 'sim-eval' })).conversationId, p.prompt, params))) as [ReplyMessage, ReplyMessage];
          versions[0].add(ra.modelVersion);
          versions[1].add(rb.modelVersion);
          out[i]!.goldA.push(score(partsA, p.prompt, ra));
          out[i]!.goldB.push(score(partsB, p.prompt, rb));
          out[i]!.wordsA.push(words(ra.content));
          out[i]!.wordsB.push(words(rb.content));
        }
      }
    }));
  } finally {
    sa.close();
    sb.close();
  }
  for (const [side, v] of versions.entries()) if (v.size !== 1) throw new Error(`comparison: side ${'AB'[side]} was decoded by ${v.size} versions (${[...v].join(', ')}); expected one`);
  return { prompts: out, partsA, partsB, versionA: [...versions[0]][0]!, versionB: [...versions[1]][0]! };
}
