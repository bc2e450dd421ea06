/**
 * Command-line chat over the WebSocket protocol (`/ws`), through the typed client
 * (`ws-client.ts`): streamed replies, multi-turn, thumbs, regenerate and side-by-side comparison.
 * Plain line-based input (readline), so it works over a pipe as well as a terminal.
 *
 *   npm run chat -- --url ws://127.0.0.1:8080/ws
 *   RLHF_API_KEY=rk_… npm run chat -- --url wss://chat.example/ws     (a server with API keys)
 *
 * Importing this module has no side effects; `main()` runs only when it is the entry point.
 */
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { z } from 'zod';
import { isMain, runCommand } from '../cli/command.ts';
import { parseConfig } from '../cli/config.ts';
import { API_KEY_ENV, authHeaders, WsClient, WsError } from './ws-client.ts';
import type { ServerMessage } from '../server/ws-protocol.ts';
import { CHOICES, THUMB_REASONS } from '../feedback/judgement-input.ts';

export const DEFAULT_URL = 'ws://127.0.0.1:8080/ws';

export const HELP = `Type a message to chat. Commands:
  /up                          thumbs up on the last reply
  /down [reason] [comment]     thumbs down; reason: ${THUMB_REASONS.join(', ')}
  /regen                       another reply to the last user message
  /compare                     two candidates for the last user message, side by side (A and B)
  /pick a|b|tie|both_bad       which compared reply is better
  /new                         start a new conversation
  /help                        this help
  /quit                        leave`;

/** The chat's options. Who the user is comes from the server (the API key in ${API_KEY_ENV}, else local mode's anonymous identity), never from an option. */
export const ChatConfig = z.object({
  url: z.string().min(1).default(DEFAULT_URL).describe('the server\'s WebSocket URL'),
  maxTokens: z.number().int().positive().optional().describe('reply length (default: the server\'s)'),
});
export type ChatConfig = Readonly<z.infer<typeof ChatConfig>>;

export const USAGE = `npm run chat -- [--url ${DEFAULT_URL}] [--max-tokens N]\n  an API key, when the server wants one, comes from the environment: ${API_KEY_ENV}=rk_…\n\n${HELP}`;

/** The options from argv (throws ConfigError). */
export function parseArgs(argv: readonly string[]): ChatConfig {
  return parseConfig(ChatConfig, { argv });
}

/** Lays out two texts in columns A and B, wrapped to `width` characters in all. */
export function sideBySide(a: string, b: string, width = 80): string {
  const col = Math.max(10, Math.floor((width - 3) / 2));
  const wrap = (s: string): string[] => {
    const lines: string[] = [];
    for (const para of s.split('\n')) {
      let line = '';
      for (const word of para.split(/\s+/).filter(Boolean)) {
        for (let w = word; w.length > 0; ) {
          const room = line ? col - line.length - 1 : col;
          if (w.length <= room) {
            line = line ? `${line} ${w}` : w;
            w = '';
          } else if (line) {
            lines.push(line);
            line = '';
          } else {
            lines.push(w.slice(0, col));
            w = w.slice(col);
          }
        }
      }
      lines.push(line);
    }
    return lines;
  };
  const la = ['A', ...wrap(a || '(empty)')];
  const lb = ['B', ...wrap(b || '(empty)')];
  const out: string[] = [];
  for (let i = 0; i < Math.max(la.length, lb.length); i++) out.push(`${(la[i] ?? '').padEnd(col)} | ${lb[i] ?? ''}`.trimEnd());
  return out.join('\n');
}

/** One chat session over one socket; every request waits for its final message. A refusal is printed as `[error] code: message`. */
export class ChatSession {
  conversationId: string | undefined;
  modelVersion: string | undefined;
  lastReplyId: string | undefined;
  lastUserMessageId: string | undefined;
  /** Set after `/pick b`: the next message continues from candidate B. */
  nextParentId: string | undefined;
  compared: { contextId: string; ids: [string, string] } | undefined;

  private constructor(
    readonly client: WsClient,
    readonly write: (s: string) => void,
    readonly maxTokens: number | undefined,
  ) {
    this.modelVersion = client.ready.modelVersion;
    client.onUnsolicited((m) => {
      if (m.type === 'error') this.write(`\n[error] ${m.code}: ${m.message}\n`);
    });
  }

  static async connect(url: string, write: (s: string) => void, maxTokens?: number, timeoutMs = 10_000): Promise<ChatSession> {
    const headers = authHeaders();
    return new ChatSession(await WsClient.connect(url, { timeoutMs, ...(headers ? { headers } : {}) }), write, maxTokens);
  }

  /** Runs `f`; a refusal by the server is printed and swallowed (the session goes on). */
  async #guard(f: () => Promise<void>): Promise<void> {
    try {
      await f();
    } catch (e) {
      if (!(e instanceof WsError) || ['closed', 'timeout'].includes(e.code)) throw e;
      this.write(`[error] ${e.message}\n`);
    }
  }

  start(): Promise<void> {
    return this.#guard(async () => {
      const m = await this.client.start();
      this.conversationId = m.conversationId;
      this.lastReplyId = this.lastUserMessageId = this.nextParentId = this.compared = undefined;
      this.write(`[conversation ${this.conversationId}] model ${m.modelVersion ?? this.modelVersion}\n`);
    });
  }

  #params(): { maxTokens?: number } {
    return this.maxTokens ? { maxTokens: this.maxTokens } : {};
  }

  #printDelta = (x: ServerMessage): void => {
    if (x.type === 'delta') this.write(x.text);
  };

  async #streamReply(send: (o: { onMessage: (m: ServerMessage) => void }) => Promise<{ content: string; messageId: string; parentId: string; finishReason: string }>): Promise<void> {
    this.write('assistant: ');
    await this.#guard(async () => {
      const m = await send({ onMessage: this.#printDelta });
      this.write(m.content === '' ? '(empty reply)\n' : '\n');
      this.lastReplyId = m.messageId;
      this.lastUserMessageId = m.parentId;
      this.write(`[reply ${this.lastReplyId} finish=${m.finishReason}]\n`);
    });
  }

  async say(content: string): Promise<void> {
    if (!this.conversationId) await this.start();
    if (!this.conversationId) return;
    const conversationId = this.conversationId;
    const parentId = this.nextParentId;
    this.nextParentId = undefined;
    await this.#streamReply((o) => this.client.say(conversationId, content, this.#params(), { ...o, ...(parentId ? { parentId } : {}) }));
  }

  async regenerate(): Promise<void> {
    if (!this.lastReplyId || !this.conversationId) return this.write('[error] no reply to regenerate yet\n');
    const [conversationId, messageId] = [this.conversationId, this.lastReplyId];
    await this.#streamReply((o) => this.client.regenerate(conversationId, messageId, this.#params(), o));
  }

  async compare(): Promise<void> {
    if (!this.lastUserMessageId || !this.conversationId) return this.write('[error] send a message first\n');
    this.write('comparing two replies…\n');
    const texts = ['', ''];
    const onMessage = (x: ServerMessage): void => {
      if (x.type === 'delta') texts[x.candidate ?? 0] += x.text;
      else if (x.type === 'reply') texts[x.candidate ?? 0] = x.content;
    };
    const [conversationId, parentId] = [this.conversationId, this.lastUserMessageId];
    await this.#guard(async () => {
      const { candidates } = await this.client.compare(conversationId, { parentId }, this.#params(), { onMessage });
      const ids = candidates.messageIds;
      this.compared = { contextId: candidates.contextId, ids: [ids[0]!, ids[1]!] };
      this.lastReplyId = ids[0];
      this.write(`${sideBySide(texts[0]!, texts[1]!)}\n[which is better? /pick a|b|tie|both_bad]\n`);
    });
  }

  async pick(choice: string): Promise<void> {
    if (!this.compared) return this.write('[error] nothing to pick from: /compare first\n');
    if (!(CHOICES as readonly string[]).includes(choice)) return this.write(`[error] choice must be one of ${CHOICES.join(', ')}\n`);
    const [a, b] = this.compared.ids;
    await this.#guard(async () => {
      const m = await this.client.feedback({ type: 'comparison', a, b, choice: choice as (typeof CHOICES)[number] });
      if (choice === 'b') {
        this.lastReplyId = b;
        this.nextParentId = b;
      }
      this.compared = undefined;
      const revealed = m.revealed;
      this.write(`[ok] comparison stored (${choice}) id ${m.id}${revealed ? ` (A was ${revealed.a}, B was ${revealed.b})` : ''}\n`);
    });
  }

  async thumb(value: 'up' | 'down', rest: string): Promise<void> {
    if (!this.lastReplyId) return this.write('[error] no reply to rate yet\n');
    const words = rest.trim().split(/\s+/).filter(Boolean);
    let reason: (typeof THUMB_REASONS)[number] | undefined;
    if (value === 'down' && words[0] && (THUMB_REASONS as readonly string[]).includes(words[0])) reason = words.shift() as (typeof THUMB_REASONS)[number];
    const comment = words.join(' ');
    const messageId = this.lastReplyId;
    await this.#guard(async () => {
      const m = await this.client.feedback({ type: 'thumb', messageId, value, ...(reason ? { reason } : {}), ...(comment ? { comment } : {}) });
      this.write(`[ok] thumb ${value}${reason ? ` (${reason})` : ''} stored id ${m.id}\n`);
    });
  }

  /** Handles one input line; false after `/quit`. */
  async handle(line: string): Promise<boolean> {
    const text = line.trim();
    if (!text) return true;
    if (!text.startsWith('/')) {
      await this.say(text);
      return true;
    }
    const [cmd = '', ...args] = text.split(/\s+/);
    const rest = text.slice(cmd.length).trim();
    switch (cmd) {
      case '/quit':
      case '/exit':
        return false;
      case '/help':
        this.write(`${HELP}\n`);
        break;
      case '/new':
        await this.start();
        break;
      case '/up':
        await this.thumb('up', rest);
        break;
      case '/down':
        await this.thumb('down', rest);
        break;
      case '/regen':
        await this.regenerate();
        break;
      case '/compare':
        await this.compare();
        break;
      case '/pick':
        await this.pick(args[0] ?? '');
        break;
      default:
        this.write(`[error] unknown command ${cmd} (/help lists them)\n`);
    }
    return true;
  }

  close(): void {
    this.client.close();
  }
}

/** Chats, reading lines from `input` one at a time (each finishes before the next starts) until /quit or EOF; returns the exit status. */
export async function chat(args: ChatConfig, input: Readable, output: Writable): Promise<number> {
  const write = (s: string): void => void output.write(s);
  let session: ChatSession;
  try {
    session = await ChatSession.connect(args.url, write, args.maxTokens);
  } catch (e) {
    write(`cannot connect to ${args.url}: ${(e as Error).message}\n`);
    return 1;
  }
  let closed = false;
  session.client.onClose((code) => {
    closed = true;
    write(`\n[connection closed: ${code}]\n`);
  });
  write(`connected to ${args.url} as ${session.client.identity ?? 'an identity the server did not name'}; /help lists the commands\n`);
  const rl = createInterface({ input, terminal: false });
  try {
    await session.start();
    write('> ');
    for await (const line of rl) {
      if (closed) break;
      try {
        if (!(await session.handle(line))) break;
      } catch (e) {
        write(`[error] ${(e as Error).message}\n`);
      }
      write('> ');
    }
  } finally {
    rl.close();
    session.close();
  }
  write('\nbye\n');
  return closed ? 1 : 0;
}

if (isMain(import.meta.url)) {
  await runCommand({ usage: USAGE, schema: ChatConfig, envPrefix: 'CHAT' }, async (cfg) => {
    process.exitCode = await chat(cfg, process.stdin, process.stdout);
  });
  process.exit(process.exitCode ?? 0);
}
