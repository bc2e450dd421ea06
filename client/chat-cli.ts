/**
 * Command-line chat over the WebSocket protocol (`/ws`): streamed replies, multi-turn, thumbs,
 * regenerate and side-by-side comparison. Plain line-based input (readline), so it works over a
 * pipe as well as a terminal.
 *
 *   npm run chat -- --url ws://127.0.0.1:8080/ws
 *
 * Importing this module has no side effects; `main()` runs only when it is the entry point.
 */
import { createInterface } from 'node:readline';
import { randomUUID } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import type { Readable, Writable } from 'node:stream';
import WebSocket from 'ws';

export const DEFAULT_URL = 'ws://127.0.0.1:8080/ws';
export const THUMB_REASONS = ['not_factual', 'unhelpful', 'unsafe', 'too_long', 'other'] as const;
export const CHOICES = ['a', 'b', 'tie', 'both_bad'] as const;

export const HELP = `Type a message to chat. Commands:
  /up                          thumbs up on the last reply
  /down [reason] [comment]     thumbs down; reason: ${THUMB_REASONS.join(', ')}
  /regen                       another reply to the last user message
  /compare                     two candidates for the last user message, side by side (A and B)
  /pick a|b|tie|both_bad       which compared reply is better
  /new                         start a new conversation
  /help                        this help
  /quit                        leave`;

export interface CliArgs {
  url: string;
  userId: string;
  maxTokens: number | undefined;
  help: boolean;
}

export function parseArgs(argv: readonly string[]): CliArgs {
  const args: CliArgs = { url: DEFAULT_URL, userId: `cli-${randomUUID().slice(0, 8)}`, maxTokens: undefined, help: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--url') args.url = value();
    else if (a === '--user') args.userId = value();
    else if (a === '--max-tokens') args.maxTokens = Number(value());
    else if (a === '--help' || a === '-h') args.help = true;
    else throw new Error(`unknown argument ${a} (try --help)`);
  }
  return args;
}

type Msg = Record<string, unknown> & { type: string };

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

/** One chat session over one socket; every request waits for its final message. */
export class ChatSession {
  conversationId: string | undefined;
  modelVersion: string | undefined;
  lastReplyId: string | undefined;
  lastUserMessageId: string | undefined;
  /** Set after `/pick b`: the next message continues from candidate B. */
  nextParentId: string | undefined;
  compared: { contextId: string; ids: [string, string] } | undefined;
  #n = 0;
  readonly #pending = new Map<string, (m: Msg) => void>();

  private constructor(
    readonly ws: WebSocket,
    readonly userId: string,
    readonly write: (s: string) => void,
    readonly maxTokens: number | undefined,
  ) {
    ws.on('message', (data) => {
      let m: Msg;
      try {
        m = JSON.parse(String(data)) as Msg;
      } catch {
        return;
      }
      const rid = typeof m.requestId === 'string' ? m.requestId : undefined;
      if (rid && this.#pending.has(rid)) this.#pending.get(rid)!(m);
      else if (m.type === 'error') this.write(`\n[error] ${String(m.code)}: ${String(m.message)}\n`);
    });
  }

  static async connect(url: string, userId: string, write: (s: string) => void, maxTokens?: number, timeoutMs = 10_000): Promise<ChatSession> {
    const ws = new WebSocket(url);
    const ready = await new Promise<Msg>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer from ${url} within ${timeoutMs} ms`)), timeoutMs);
      ws.once('message', (d) => (clearTimeout(timer), resolve(JSON.parse(String(d)) as Msg)));
      ws.once('error', (e) => (clearTimeout(timer), reject(e)));
      ws.once('close', (code) => (clearTimeout(timer), reject(new Error(`socket closed (${code}) before ready`))));
    });
    const s = new ChatSession(ws, userId, write, maxTokens);
    s.modelVersion = typeof ready.modelVersion === 'string' ? ready.modelVersion : undefined;
    return s;
  }

  /** Sends `msg` with a fresh requestId; `onMessage` sees every message of it until it returns true. */
  request(msg: Record<string, unknown>, onMessage: (m: Msg) => boolean, timeoutMs = 120_000): Promise<Msg> {
    const requestId = `c${++this.#n}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => (this.#pending.delete(requestId), reject(new Error(`no reply to ${String(msg.type)} within ${timeoutMs} ms`))), timeoutMs);
      const onClose = (): void => (clearTimeout(timer), this.#pending.delete(requestId), reject(new Error('connection closed')));
      this.ws.once('close', onClose);
      this.#pending.set(requestId, (m) => {
        if (m.type === 'error' || onMessage(m)) {
          clearTimeout(timer);
          this.ws.off('close', onClose);
          this.#pending.delete(requestId);
          resolve(m);
        }
      });
      this.ws.send(JSON.stringify({ ...msg, requestId }));
    });
  }

  #fail(m: Msg): boolean {
    if (m.type !== 'error') return false;
    this.write(`[error] ${String(m.code)}: ${String(m.message)}\n`);
    return true;
  }

  async start(): Promise<void> {
    const m = await this.request({ type: 'start', userId: this.userId }, (x) => x.type === 'conversation');
    if (this.#fail(m)) return;
    this.conversationId = String(m.conversationId);
    this.lastReplyId = this.lastUserMessageId = this.nextParentId = this.compared = undefined;
    this.write(`[conversation ${this.conversationId}] model ${String(m.modelVersion ?? this.modelVersion)}\n`);
  }

  #params(): Record<string, unknown> {
    return this.maxTokens ? { maxTokens: this.maxTokens } : {};
  }

  async #streamReply(msg: Record<string, unknown>): Promise<void> {
    this.write('assistant: ');
    const m = await this.request(msg, (x) => {
      if (x.type === 'delta') this.write(String(x.text));
      return x.type === 'reply';
    });
    if (this.#fail(m)) return;
    this.write(m.content === '' ? '(empty reply)\n' : '\n');
    this.lastReplyId = String(m.messageId);
    this.lastUserMessageId = String(m.parentId);
    this.write(`[reply ${this.lastReplyId} finish=${String(m.finishReason)}]\n`);
  }

  async say(content: string): Promise<void> {
    if (!this.conversationId) await this.start();
    const parentId = this.nextParentId;
    this.nextParentId = undefined;
    await this.#streamReply({ type: 'user_message', conversationId: this.conversationId, content, params: this.#params(), ...(parentId ? { parentId } : {}) });
  }

  async regenerate(): Promise<void> {
    if (!this.lastReplyId) return this.write('[error] no reply to regenerate yet\n');
    await this.#streamReply({ type: 'regenerate', conversationId: this.conversationId, messageId: this.lastReplyId, params: this.#params() });
  }

  async compare(): Promise<void> {
    if (!this.lastUserMessageId) return this.write('[error] send a message first\n');
    this.write('comparing two replies…\n');
    const texts = ['', ''];
    const m = await this.request({ type: 'compare', conversationId: this.conversationId, parentId: this.lastUserMessageId, params: this.#params() }, (x) => {
      if (x.type === 'delta') texts[Number(x.candidate ?? 0)] += String(x.text);
      else if (x.type === 'reply') texts[Number(x.candidate ?? 0)] = String(x.content);
      return x.type === 'candidates';
    });
    if (this.#fail(m)) return;
    const ids = m.messageIds as string[];
    this.compared = { contextId: String(m.contextId), ids: [ids[0]!, ids[1]!] };
    this.lastReplyId = ids[0];
    this.write(`${sideBySide(texts[0]!, texts[1]!)}\n[which is better? /pick a|b|tie|both_bad]\n`);
  }

  async pick(choice: string): Promise<void> {
    if (!this.compared) return this.write('[error] nothing to pick from: /compare first\n');
    if (!(CHOICES as readonly string[]).includes(choice)) return this.write(`[error] choice must be one of ${CHOICES.join(', ')}\n`);
    const [a, b] = this.compared.ids;
    const m = await this.request({ type: 'comparison', a, b, choice }, (x) => x.type === 'feedback_ack');
    if (this.#fail(m)) return;
    if (choice === 'b') {
      this.lastReplyId = b;
      this.nextParentId = b;
    }
    this.compared = undefined;
    this.write(`[ok] comparison stored (${choice}) id ${String(m.id)}\n`);
  }

  async thumb(value: 'up' | 'down', rest: string): Promise<void> {
    if (!this.lastReplyId) return this.write('[error] no reply to rate yet\n');
    const words = rest.trim().split(/\s+/).filter(Boolean);
    let reason: string | undefined;
    if (value === 'down' && words[0] && (THUMB_REASONS as readonly string[]).includes(words[0])) reason = words.shift();
    const comment = words.join(' ');
    const m = await this.request(
      { type: 'thumb', messageId: this.lastReplyId, value, ...(reason ? { reason } : {}), ...(comment ? { comment } : {}) },
      (x) => x.type === 'feedback_ack',
    );
    if (this.#fail(m)) return;
    this.write(`[ok] thumb ${value}${reason ? ` (${reason})` : ''} stored id ${String(m.id)}\n`);
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
    this.ws.close();
  }
}

/** Reads lines from `input` one at a time (each finishes before the next starts) until /quit or EOF. */
export async function runCli(argv: readonly string[], input: Readable, output: Writable): Promise<number> {
  const write = (s: string): void => void output.write(s);
  let args: CliArgs;
  try {
    args = parseArgs(argv);
  } catch (e) {
    write(`${(e as Error).message}\n`);
    return 2;
  }
  if (args.help) {
    write(`usage: npm run chat [-- --url ${DEFAULT_URL}] [--user ID] [--max-tokens N]\n${HELP}\n`);
    return 0;
  }
  let session: ChatSession;
  try {
    session = await ChatSession.connect(args.url, args.userId, write, args.maxTokens);
  } catch (e) {
    write(`cannot connect to ${args.url}: ${(e as Error).message}\n`);
    return 1;
  }
  let closed = false;
  session.ws.on('close', (code) => {
    closed = true;
    write(`\n[connection closed: ${code}]\n`);
  });
  write(`connected to ${args.url} as ${args.userId}; /help lists the commands\n`);
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

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runCli(process.argv.slice(2), process.stdin, process.stdout).then((code) => process.exit(code));
}
