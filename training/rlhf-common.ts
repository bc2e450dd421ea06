/**
 * Small pieces shared by the reward model, PPO and DPO: rendering a (prompt, reply) exchange to
 * ids, padding rows of ids into a batch, one AdamW step from a loss closure, and the learning
 * rate schedule.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { GPT } from '../model/gpt.ts';
import type { AdamW } from '../model/adamw.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { endOfTurnId, renderChat, type ChatMessage } from '../model/chat-template.ts';

/**
 * `prompt` rendered with the generation prompt, then the reply's ids closed by `<|end|>` (added
 * when missing). Longer than `blockSize`: the oldest prompt tokens are dropped, never the reply's.
 * Returns the ids and where the reply starts.
 */
export function encodeExchange(tok: Tokenizer, prompt: readonly ChatMessage[], reply: string | readonly number[], blockSize: number): { ids: number[]; replyStart: number } {
  const p = renderChat(tok, prompt, { addGenerationPrompt: true }).ids;
  const r = typeof reply === 'string' ? tok.encode(reply) : [...reply];
  const eot = endOfTurnId(tok);
  if (r[r.length - 1] !== eot) r.push(eot);
  const keepReply = r.slice(Math.max(0, r.length - blockSize + 1)); // at least one prompt token stays
  const keepPrompt = p.slice(Math.max(0, p.length - (blockSize - keepReply.length)));
  return { ids: [...keepPrompt, ...keepReply], replyStart: keepPrompt.length };
}

/** Rows of ids right-padded to one length: inputs `[B, T]` flat, and each row's length. */
export interface PaddedRows {
  B: number;
  T: number;
  ids: Int32Array;
  lengths: number[];
}

export function padRows(rows: readonly (readonly number[])[], pad: number): PaddedRows {
  const B = rows.length;
  const T = Math.max(1, ...rows.map((r) => r.length));
  const ids = new Int32Array(B * T).fill(pad);
  rows.forEach((r, b) => ids.set(r, b * T));
  return { B, T, ids, lengths: rows.map((r) => r.length) };
}

/**
 * One optimizer step on `lossFn` over `vars` (variables of `gpt`); `aux` scalars are read back
 * too. Returns the loss, the aux values and the gradient norm. Disposes everything it made.
 */
export function optimizerStep(
  gpt: GPT,
  opt: AdamW,
  vars: tf.Variable[],
  lr: number,
  lossFn: () => { loss: tf.Scalar; aux?: Record<string, tf.Scalar> },
): { loss: number; aux: Record<string, number>; gradNorm: number } {
  const auxNames: string[] = [];
  const auxKept: tf.Scalar[] = [];
  const { value, grads } = tf.variableGrads(() => {
    const { loss, aux = {} } = lossFn();
    for (const [k, v] of Object.entries(aux)) {
      auxNames.push(k);
      auxKept.push(tf.keep(v));
    }
    return loss;
  }, vars);
  const named: Record<string, tf.Tensor> = {};
  for (const [name, p] of gpt.params) if (grads[p.name]) named[name] = grads[p.name]!;
  const gradNorm = opt.apply(named, lr);
  const loss = value.dataSync()[0]!;
  const aux: Record<string, number> = {};
  auxNames.forEach((k, i) => (aux[k] = auxKept[i]!.dataSync()[0]!));
  tf.dispose([value, ...auxKept]);
  return { loss, aux, gradNorm };
}

/** Linear warmup then cosine decay to `minLr` over `total` steps. */
export function warmupCosine(step: number, total: number, lr: number, minLr: number, warmup: number): number {
  if (step < warmup) return (lr * (step + 1)) / warmup;
  const progress = Math.min(1, (step - warmup) / Math.max(1, total - warmup));
  return minLr + 0.5 * (lr - minLr) * (1 + Math.cos(Math.PI * progress));
}

/** Mean of an array (NaN when empty). */
export const mean = (xs: readonly number[]): number => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);

/** log σ(x) = −softplus(−x), elementwise (tf.logSigmoid's custom gradient breaks inside variableGrads on wasm). */
export function logSigmoid<T extends tf.Tensor>(x: T): T {
  return tf.neg(tf.softplus(tf.neg(x)));
}
