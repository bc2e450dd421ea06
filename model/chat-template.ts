/**
 * The chat format, defined here and nowhere else. A conversation renders to
 *
 *   [<|system|> system <|end|>]  <|user|> u1 <|end|>  <|assistant|> a1 <|end|>  <|user|> u2 <|end|> ...
 *
 * with a loss mask that is 1 exactly on the assistant's content tokens and its closing `<|end|>`
 * (so the model learns to say what it says and when to stop), 0 elsewhere — the `<|assistant|>`
 * opener included, since the renderer, not the model, writes it. Content is encoded with
 * `Tokenizer.encode`, which never yields special ids: user text cannot fake a turn boundary.
 */
import type { Tokenizer } from './tokenizer.ts';

export type Role = 'system' | 'user' | 'assistant';

/** One turn of a conversation. */
export interface ChatMessage {
  role: Role;
  content: string;
}

/** Token ids and a loss mask of the same length; `mask[i] = 1` iff `ids[i]` is produced by the assistant. */
export interface RenderedChat {
  ids: number[];
  mask: number[];
}

const OPENER = { system: '<|system|>', user: '<|user|>', assistant: '<|assistant|>' } as const;

/** The content of the last user turn of `messages` ('' without one). */
export function lastUserTurn(messages: readonly ChatMessage[]): string {
  return messages.findLast((m) => m.role === 'user')?.content ?? '';
}

/** Throws an Error naming the first message that breaks "optional system first, then user/assistant alternating, user first". */
export function validateChat(messages: readonly ChatMessage[]): void {
  let expect: 'user' | 'assistant' = 'user';
  messages.forEach((m, i) => {
    if (m === null || typeof m !== 'object' || !Object.hasOwn(OPENER, m.role)) {
      throw new Error(`message ${i}: unknown role ${JSON.stringify((m as { role?: unknown } | null)?.role)}; expected system, user or assistant`);
    }
    if (typeof m.content !== 'string') throw new Error(`message ${i}: content must be a string`);
    if (m.role === 'system') {
      if (i !== 0) throw new Error(`message ${i}: a system message may only come first`);
      return;
    }
    if (m.role !== expect) throw new Error(`message ${i}: expected ${expect === 'user' ? 'a user' : 'an assistant'} turn, got ${m.role} (turns must alternate, starting with user)`);
    expect = expect === 'user' ? 'assistant' : 'user';
  });
}

/**
 * Renders a conversation to ids and an assistant-only loss mask.
 *
 * @param opts.addGenerationPrompt append `<|assistant|>` (mask 0) after a conversation that ends
 *   with a user turn, so sampling continues with the assistant's reply.
 * @example
 *   const { ids, mask } = renderChat(tok, [
 *     { role: 'user', content: 'What does lucid mean?' },
 *     { role: 'assistant', content: '"Lucid" means clear.' },
 *   ]);
 */
export function renderChat(tok: Tokenizer, messages: readonly ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): RenderedChat {
  validateChat(messages);
  const ids: number[] = [];
  const mask: number[] = [];
  const end = endOfTurnId(tok);
  for (const m of messages) {
    const bit = m.role === 'assistant' ? 1 : 0;
    ids.push(tok.specialId(OPENER[m.role]));
    mask.push(0);
    for (const id of tok.encode(m.content)) {
      ids.push(id);
      mask.push(bit);
    }
    ids.push(end);
    mask.push(bit);
  }
  if (opts.addGenerationPrompt) {
    const last = messages[messages.length - 1];
    if (last?.role !== 'user') throw new Error('addGenerationPrompt needs a conversation that ends with a user turn');
    ids.push(tok.specialId('<|assistant|>'));
    mask.push(0);
  }
  return { ids, mask };
}

/** The `<|end|>` id: closes every turn, and generation stops when the assistant emits it. */
export function endOfTurnId(tok: Tokenizer): number {
  return tok.specialId('<|end|>');
}
