/**
 * The one reader of admin JSON bodies: an empty body is `{}`, anything else must be
 * `application/json` (415), valid JSON (`invalid_json`) and match the schema (`invalid_request`).
 */
import type { Context } from 'hono';
import type { z } from 'zod';
import { ChatError } from './errors.ts';
import { requireJson } from './openai-routes.ts';

export async function jsonBody<T extends z.ZodType>(c: Context, schema: T): Promise<z.output<T>> {
  const text = await c.req.text();
  let raw: unknown = {};
  if (text.trim()) {
    requireJson(c);
    try {
      raw = JSON.parse(text);
    } catch {
      throw new ChatError('invalid_json', 'the body is not valid JSON');
    }
  }
  const r = schema.safeParse(raw);
  if (!r.success) throw new ChatError('invalid_request', r.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; '));
  return r.data;
}
