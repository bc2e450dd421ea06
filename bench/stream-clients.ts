/**
 * The serving benchmark's streaming clients, run in a process of their own as a load generator
 * is (the clients of a deployed server are elsewhere): sharing the server's event loop, they
 * would delay the frames they time by one turn of that loop and add their own parsing to it.
 *
 * `N` clients each keep exactly one reply in flight: on the WebSocket a new conversation (started
 * while the previous reply streams) and a `user_message`; on the OpenAI route a streamed `POST
 * /v1/chat/completions` over a kept-alive connection. Each records its time to first text.
 *
 * As a child (`node --import tsx bench/stream-clients.ts '<json>'` with `{url, door, n, seconds,
 * prompt, maxTokens}`): it opens the clients and warms each up with one reply, prints `ready`,
 * waits for a line on stdin, keeps them busy for `seconds`, and prints one JSON line
 * `{ttfts, tokens, replies, wallMs, cpuUs}`.
 */
import { Agent, request } from 'node:http';
import { createInterface } from 'node:readline';
import WebSocket from 'ws';
import { isMain } from '../cli/command.ts';

export type Door = 'ws' | 'openai';

export interface LoadSpec {
  /** The server's base URL, `http://127.0.0.1:PORT`. */
  url: string;
  door: Door;
  n: number;
  seconds: number;
  prompt: string;
  maxTokens: number;
}

export interface LoadResult {
  ttfts: number[];
  tokens: number;
  replies: number;
  wallMs: number;
  /** CPU time of the client process over the run (user + system, µs). */
  cpuUs: number;
}

export interface Turn {
  ttftMs: number;
  tokens: number;
}

/** One WebSocket client: frames parsed once, handed to whoever waits for them. */
export class Client {
  readonly ws: WebSocket;
  #handlers = new Set<(m: Record<string, unknown>) => void>();
  #next: Promise<string> | undefined;
  constructor(url: string) {
    this.ws = new WebSocket(url);
    this.ws.on('message', (d) => {
      const m = JSON.parse(String(d)) as Record<string, unknown>;
      for (const h of this.#handlers) h(m);
    });
  }
  async open(): Promise<void> {
    await this.wait((m) => m.type === 'ready');
  }
  wait(pred: (m: Record<string, unknown>) => boolean, onMsg?: (m: Record<string, unknown>) => void): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('bench: no answer within 120 s')), 120_000);
      const h = (m: Record<string, unknown>) => {
        onMsg?.(m);
        if (m.type === 'error') {
          clearTimeout(timer);
          this.#handlers.delete(h);
          reject(new Error(`bench: server error ${String(m.code)}: ${String(m.message)}`));
        } else if (pred(m)) {
          clearTimeout(timer);
          this.#handlers.delete(h);
          resolve(m);
        }
      };
      this.#handlers.add(h);
    });
  }
  async conversation(): Promise<string> {
    const p = this.wait((m) => m.type === 'conversation');
    this.ws.send(JSON.stringify({ type: 'start' }));
    return String((await p).conversationId);
  }
  /**
   * Sends a user message in a new conversation; resolves with TTFT (ms, from the message) and
   * generated tokens. The next turn's conversation is started while this reply streams, as a
   * client preparing its next chat would.
   */
  async turn(content: string, maxTokens: number, seed: number): Promise<Turn> {
    const conversationId = await (this.#next ?? this.conversation());
    this.#next = this.conversation();
    const t0 = performance.now();
    let first = 0;
    const p = this.wait(
      (m) => m.type === 'reply',
      (m) => {
        if (m.type === 'delta' && !first) first = performance.now();
      },
    );
    this.ws.send(JSON.stringify({ type: 'user_message', conversationId, content, params: { maxTokens, temperature: 1, topP: 1, seed } }));
    const reply = await p;
    return { ttftMs: (first || performance.now()) - t0, tokens: (reply.usage as { completionTokens: number }).completionTokens };
  }
}

const agent = new Agent({ keepAlive: true });

/**
 * One streamed OpenAI chat completion over a kept-alive connection; TTFT to the first chunk with
 * content. It samples as the WebSocket clients do (temperature 1, top_p 1), so the two doors do
 * the same decoding work; the server's default top_p of 0.95 sorts every row's candidates.
 */
export function openaiTurn(base: string, content: string, maxTokens: number, seed: number): Promise<Turn> {
  const t0 = performance.now();
  const body = JSON.stringify({ model: 'bench', messages: [{ role: 'user', content }], max_tokens: maxTokens, temperature: 1, top_p: 1, seed, stream: true, stream_options: { include_usage: true } });
  return new Promise((resolve, reject) => {
    const req = request(`${base}/v1/chat/completions`, { method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      let first = 0;
      let tokens = -1;
      let rest = '';
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (part: string) => {
        if (res.statusCode !== 200) {
          text += part;
          return;
        }
        rest += part;
        let at: number;
        while ((at = rest.indexOf('\n\n')) >= 0) {
          const event = rest.slice(0, at);
          rest = rest.slice(at + 2);
          if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
          const chunk = JSON.parse(event.slice(6)) as { choices: { delta?: { content?: string } }[]; usage?: { completion_tokens: number } };
          if (!first && chunk.choices[0]?.delta?.content) first = performance.now();
          if (chunk.usage) tokens = chunk.usage.completion_tokens;
        }
      });
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`bench: /v1/chat/completions answered ${res.statusCode}: ${text}`));
        else if (tokens < 0) reject(new Error('bench: the stream ended without usage'));
        else resolve({ ttftMs: (first || performance.now()) - t0, tokens });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Opens the clients of `spec` and warms each up with one reply; `run` then keeps them busy. */
export async function openLoad(spec: LoadSpec): Promise<{ run: () => Promise<LoadResult>; close: () => void }> {
  const ws = spec.url.replace(/^http/, 'ws') + '/ws';
  const clients = spec.door === 'ws' ? Array.from({ length: spec.n }, () => new Client(ws)) : [];
  await Promise.all(clients.map((c) => c.open()));
  const turn = (i: number, seed: number) => (spec.door === 'ws' ? clients[i]!.turn(spec.prompt, spec.maxTokens, seed) : openaiTurn(spec.url, spec.prompt, spec.maxTokens, seed));
  await Promise.all(Array.from({ length: spec.n }, (_, i) => turn(i, 10_000 + i)));
  const run = async (): Promise<LoadResult> => {
    const ttfts: number[] = [];
    let tokens = 0;
    let replies = 0;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const end = t0 + spec.seconds * 1000;
    await Promise.all(
      Array.from({ length: spec.n }, async (_, i) => {
        for (let r = 0; performance.now() < end; r++) {
          const x = await turn(i, r * 1000 + i);
          ttfts.push(x.ttftMs);
          tokens += x.tokens;
          replies++;
        }
      }),
    );
    const cpu = process.cpuUsage(cpu0);
    return { ttfts, tokens, replies, wallMs: performance.now() - t0, cpuUs: cpu.user + cpu.system };
  };
  return { run, close: () => clients.forEach((c) => c.ws.terminate()) };
}

if (isMain(import.meta.url)) {
  const spec = JSON.parse(process.argv[2] ?? '') as LoadSpec;
  const load = await openLoad(spec);
  process.stdout.write('ready\n');
  const lines = createInterface({ input: process.stdin });
  await new Promise<void>((resolve) => lines.once('line', () => resolve()));
  const result = await load.run();
  load.close();
  process.stdout.write(JSON.stringify(result) + '\n');
  lines.close();
  agent.destroy();
}
