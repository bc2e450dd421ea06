/**
 * What log-probabilities, logit_bias and penalties cost through the OpenAI routes, on the
 * committed SFT checkpoint, one request at a time: chat completions of 64 tokens plain, with
 * `logprobs` + `top_logprobs: 20`, and with `logit_bias` + both penalties; and scoring a prompt of
 * nearly the whole context with `/v1/completions` (`echo`, `max_tokens: 0`, `logprobs: 1`), as
 * lm-evaluation-harness does. One JSON line per case: `{bench:'openai-logprobs', case,
 * tokens_per_s | ms}`, the median of 5 requests after one warm-up.
 *
 * Runnable alone: `node --import tsx bench/openai-logprobs.ts`.
 */
import { pathToFileURL } from 'node:url';
import { openTempStore } from '../feedback/temp-store.ts';
import { defaultServerConfig } from '../server/config.ts';
import { startServer } from '../server/server.ts';

const RUNS = 5;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export async function benchOpenAILogprobs(modelDir = 'checkpoints/sft'): Promise<Record<string, unknown>[]> {
  const store = await openTempStore({ prefix: 'bench-openai' });
  const srv = await startServer(defaultServerConfig({ port: 0, host: '127.0.0.1', modelDir }), { store, ownStore: true, defaultMetrics: false, log: () => {} });
  try {
    const chat = await srv.ready;
    const eot = chat.model.tok.specialId('<|end|>');
    const post = async (path: string, body: unknown) => {
      const t0 = performance.now();
      const r = await fetch(`${srv.url}/v1/${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const json = (await r.json()) as { usage: { completion_tokens: number }; error?: unknown };
      if (!r.ok) throw new Error(JSON.stringify(json));
      return { ms: performance.now() - t0, tokens: json.usage.completion_tokens };
    };
    const messages = [{ role: 'user', content: 'What does lucid mean?' }];
    // The end-of-turn token is banned in every case, so each reply is 64 tokens long.
    const base = { model: 'champion', messages, max_tokens: 64, temperature: 1, seed: 1, logit_bias: { [eot]: -100 } };
    const cases: [string, Record<string, unknown>][] = [
      ['chat', base],
      ['chat+logprobs20', { ...base, logprobs: true, top_logprobs: 20 }],
      ['chat+bias+penalties', { ...base, logit_bias: { [eot]: -100, 100: 2, 200: -2 }, presence_penalty: 0.5, frequency_penalty: 0.5 }],
    ];
    const out: Record<string, unknown>[] = [];
    for (const [name, body] of cases) {
      await post('chat/completions', body);
      const rates: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        const { ms, tokens } = await post('chat/completions', body);
        rates.push((tokens * 1000) / ms);
      }
      out.push({ bench: 'openai-logprobs', case: name, tokens_per_s: Math.round(median(rates)) });
    }
    const { tok, gpt } = chat.model;
    let prompt = '';
    while (tok.encode(prompt + 'the cat sat on the mat. ').length <= gpt.config.blockSize) prompt += 'the cat sat on the mat. ';
    const score = { model: 'champion', prompt, echo: true, max_tokens: 0, logprobs: 1, temperature: 0 };
    await post('completions', score);
    const ms: number[] = [];
    for (let i = 0; i < RUNS; i++) ms.push((await post('completions', score)).ms);
    out.push({ bench: 'openai-logprobs', case: `score-${tok.encode(prompt).length}-tokens`, ms: Math.round(median(ms) * 10) / 10 });
    return out;
  } finally {
    await srv.close();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  for (const line of await benchOpenAILogprobs()) console.log(JSON.stringify(line));
}
