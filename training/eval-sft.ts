/**
 * Held-out quality of a chat policy, on dialogues no training step saw:
 *  - assistant-token loss (the SFT objective) of the model, to compare with the base model's;
 *  - end-of-turn rate: the share of replies that end with the end-of-turn token within
 *    `maxTokens` (greedy decoding, every assistant turn, with its real preceding turns);
 *  - memory: on follow-ups that refer back ("Use it in a sentence."), the share of replies that
 *    contain the word from the earlier turn, with the earlier turns and with them removed.
 *
 *   node --import tsx training/eval-sft.ts --checkpoint checkpoints/sft
 */
import { z } from 'zod';
import { backendOptions } from '../cli/options.ts';
import { join } from 'node:path';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import { loadCheckpoint } from '../model/checkpoint.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { renderChat, type ChatMessage } from '../model/chat-template.ts';
import { generateBatch } from '../model/generate.ts';
import { readJsonl, renderRows, rowEvalBatches, type Dialogue } from './datasets.ts';
import { evaluateLoss } from './train-loop.ts';
import { isMain, runCommand } from '../cli/command.ts';

export const EvalSftConfig = z.object({
  checkpoint: z.string().default('checkpoints/sft').describe('policy checkpoint to evaluate'),
  data: z.string().default('data').describe('directory with dialogues.val.jsonl'),
  dialogues: z.number().int().positive().default(200).describe('held-out dialogues to use'),
  maxTokens: z.number().int().positive().default(64).describe('reply token limit'),
  batchSize: z.number().int().positive().default(16).describe('replies decoded together'),
  ...backendOptions,
});

export interface SftReport {
  heldOutLoss: number;
  endOfTurnRate: number;
  replies: number;
  followUps: number;
  followUpWordRate: number;
  followUpWordRateWithoutContext: number;
}

/** A follow-up turn that refers back to a word named earlier in the dialogue. */
interface FollowUp {
  context: ChatMessage[];
  word: string;
}

function followUps(dialogues: readonly Dialogue[]): FollowUp[] {
  const out: FollowUp[] = [];
  for (const d of dialogues) {
    const word = d.meta?.word;
    if (typeof word !== 'string') continue;
    // The follow-up is a user turn that does not itself name the word, after a turn that did.
    for (let i = 2; i < d.messages.length; i++) {
      const m = d.messages[i]!;
      if (m.role !== 'user' || m.content.toLowerCase().includes(word.toLowerCase())) continue;
      const named = d.messages.slice(0, i).some((p) => p.role === 'user' && p.content.toLowerCase().includes(word.toLowerCase()));
      const answer = d.messages[i + 1];
      if (named && answer?.content.toLowerCase().includes(word.toLowerCase())) {
        out.push({ context: d.messages.slice(0, i + 1), word });
        break;
      }
    }
  }
  return out;
}

function generateAll(gpt: GPT, tok: Tokenizer, contexts: ChatMessage[][], maxTokens: number, batchSize: number) {
  const results = [];
  const room = Math.max(1, gpt.config.blockSize - Math.min(maxTokens, Math.floor(gpt.config.blockSize / 2)));
  for (let i = 0; i < contexts.length; i += batchSize) {
    const prompts = contexts.slice(i, i + batchSize).map((c) => {
      const ids = renderChat(tok, c, { addGenerationPrompt: true }).ids;
      return ids.slice(Math.max(0, ids.length - room));
    });
    results.push(...generateBatch(gpt, tok, prompts, { temperature: 0, maxTokens, seed: 0 }));
  }
  return results;
}

export function evaluateSft(gpt: GPT, tok: Tokenizer, dialogues: readonly Dialogue[], opts: { maxTokens: number; batchSize: number }): SftReport {
  const pad = tok.specialId('<|pad|>');
  const heldOutLoss = evaluateLoss(gpt, rowEvalBatches(renderRows(tok, dialogues, gpt.config.blockSize), 16, pad, 1000));
  const contexts: ChatMessage[][] = [];
  for (const d of dialogues) {
    d.messages.forEach((m, i) => {
      if (m.role === 'assistant') contexts.push(d.messages.slice(0, i));
    });
  }
  const replies = generateAll(gpt, tok, contexts, opts.maxTokens, opts.batchSize);
  const endOfTurnRate = replies.filter((r) => r.finishReason === 'stop').length / Math.max(1, replies.length);
  const fus = followUps(dialogues);
  const has = (text: string, word: string) => text.toLowerCase().includes(word.toLowerCase());
  const withCtx = generateAll(gpt, tok, fus.map((f) => f.context), opts.maxTokens, opts.batchSize);
  const noCtx = generateAll(gpt, tok, fus.map((f) => [f.context[f.context.length - 1]!]), opts.maxTokens, opts.batchSize);
  return {
    heldOutLoss,
    endOfTurnRate,
    replies: replies.length,
    followUps: fus.length,
    followUpWordRate: withCtx.filter((r, i) => has(r.text, fus[i]!.word)).length / Math.max(1, fus.length),
    followUpWordRateWithoutContext: noCtx.filter((r, i) => has(r.text, fus[i]!.word)).length / Math.max(1, fus.length),
  };
}

/** Generates replies to a few held-out conversations, for the README and a quick look. */
export function sampleDialogues(gpt: GPT, tok: Tokenizer, dialogues: readonly Dialogue[], n: number): ChatMessage[][] {
  const out: ChatMessage[][] = [];
  for (const d of dialogues.slice(0, n)) {
    const convo: ChatMessage[] = [];
    for (const m of d.messages) {
      if (m.role !== 'assistant') {
        convo.push(m);
        continue;
      }
      const ids = renderChat(tok, convo, { addGenerationPrompt: true }).ids;
      const room = Math.max(1, gpt.config.blockSize - Math.min(48, Math.floor(gpt.config.blockSize / 2)));
      const [g] = generateBatch(gpt, tok, [ids.slice(Math.max(0, ids.length - room))], { temperature: 0, maxTokens: 48, seed: 0 });
      convo.push({ role: 'assistant', content: g!.text });
    }
    out.push(convo);
  }
  return out;
}

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'node --import tsx training/eval-sft.ts [options]', schema: EvalSftConfig, envPrefix: 'EVAL' }, async (cfg) => {
    await initBackend({ backend: cfg.backend || undefined });
    const ck = loadCheckpoint(cfg.checkpoint, { kind: 'policy' });
    const tok = Tokenizer.fromJSON(ck.tokenizer);
    const gpt = GPT.fromWeights(ck.meta.config, 'policy', ck.weights);
    const dialogues = readJsonl<Dialogue>(join(cfg.data, 'dialogues.val.jsonl')).slice(0, cfg.dialogues);
    console.log(JSON.stringify(evaluateSft(gpt, tok, dialogues, cfg)));
    gpt.dispose();
  });
}
