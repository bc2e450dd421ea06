/** Input validation at the store's boundary: zod issues become `invalid_input` FeedbackErrors. */
import type { z } from 'zod';
import { FeedbackError } from './errors.ts';

/** Parses `input` with `schema`; throws `FeedbackError('invalid_input')` naming the first bad field. */
export function parseInput<T>(schema: z.ZodType<T>, input: unknown): T {
  const parsed = schema.safeParse(input);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  throw new FeedbackError('invalid_input', `${issue.path.join('.') || 'input'}: ${issue.message}`);
}
