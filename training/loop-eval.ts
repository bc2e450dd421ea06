/**
 * Evaluation of a policy on fixed held-out prompts, sampled with the settings users' replies get
 * (temperature, top-p, max tokens): proxy score, ensemble disagreement (when the proxy has one),
 * KL per reply to SFT, length, and gold (for the report only, when a gold source is given).
 */
import type { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { generateBatch } from '../model/generate.ts';
import { renderChat, type ChatMessage } from '../model/chat-template.ts';
import { episodeKl, type Episode } from './ppo.ts';
import type { RewardItem, RewardSource } from './reward-source.ts';
import { mean } from './rlhf-common.ts';
import type { PolicyEval } from './loop-gates.ts';

/** Sampling settings of an evaluation (those of the users' replies). */
export interface EvalSampling {
  maxTokens: number;
  temperature: number;
  topP: number;
  seed: number;
}

/** A reward source that can also say how much its members disagree (a reward ensemble). */
interface SpreadSource extends RewardSource {
  scoreSpread(items: readonly RewardItem[]): Promise<{ mean: number; std: number }[]>;
}

const hasSpread = (s: RewardSource): s is SpreadSource => typeof (s as Partial<SpreadSource>).scoreSpread === 'function';

/** One reply per prompt with the given sampling settings (prompts longer than the window keep their latest tokens). */
export function sampleForEval(model: GPT, tok: Tokenizer, prompts: readonly ChatMessage[][], s: EvalSampling): Episode[] {
  const maxPrompt = model.config.blockSize - s.maxTokens - 1;
  if (maxPrompt < 2) throw new Error(`maxTokens ${s.maxTokens} leaves no room for a prompt in blockSize ${model.config.blockSize}`);
  const promptIds = prompts.map((p) => {
    const ids = renderChat(tok, p, { addGenerationPrompt: true }).ids;
    return ids.slice(Math.max(0, ids.length - maxPrompt));
  });
  const gens = generateBatch(model, tok, promptIds, { maxTokens: s.maxTokens, temperature: s.temperature, topK: 0, topP: s.topP, seed: s.seed, stop: [] });
  return gens.map((g, i) => ({ prompt: prompts[i]!, promptIds: promptIds[i]!, replyIds: g.ids, reply: g.text, finishReason: g.finishReason }));
}

/** Proxy score, disagreement, KL to SFT and length of a policy's replies on fixed prompts; gold when given (reporting). */
export async function evaluatePolicy(policy: GPT, sft: GPT, tok: Tokenizer, proxy: RewardSource, prompts: readonly ChatMessage[][], o: EvalSampling & { gold?: RewardSource }): Promise<PolicyEval> {
  const eps = sampleForEval(policy, tok, prompts, o);
  const items = eps.map((e) => ({ prompt: e.prompt, reply: e.reply, replyIds: e.replyIds }));
  return {
    proxy: mean(await proxy.score(items)),
    spread: hasSpread(proxy) ? mean((await proxy.scoreSpread(items)).map((s) => s.std)) : NaN,
    gold: o.gold ? mean(await o.gold.score(items)) : NaN,
    kl: mean(episodeKl(policy, sft, tok, eps)),
    length: mean(eps.map((e) => e.replyIds.length)),
  };
}

/** The metrics an evaluation logs (the curve of a run); spread and gold only when measured. */
export function evalMetrics(e: PolicyEval): Record<string, number> {
  return finite({ eval_proxy: e.proxy, eval_spread: e.spread, eval_gold: e.gold, eval_kl: e.kl, eval_length: e.length });
}

/** `m` without its non-finite entries (what is not measured is not logged). */
export function finite(m: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(m).filter(([, v]) => Number.isFinite(v)));
}
