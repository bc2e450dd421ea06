/**
 * The shape of a judgement as callers submit it (server, simulated users, tests), validated with
 * zod at the boundary and mapped to stable {@link FeedbackError} codes.
 *
 * - thumb: `{ kind: 'thumb', messageId, value: 'up'|'down', reason?, comment? }`; a reason is
 *   only accepted with a thumbs down.
 * - comparison: `{ kind: 'comparison', contextId?, a, b, choice: 'a'|'b'|'tie'|'both_bad' }`.
 * - ranking: `{ kind: 'ranking', contextId?, candidates: [best, …, worst], notRankable? }`,
 *   2 ≤ K ≤ 16 distinct replies; with `notRankable` the order carries no meaning.
 * All take `raterId`, optional `keyId` (the rater's API key id, never the key), `sessionId`,
 * `comment` (≤ 2,000 characters) and `idempotencyKey` (a retry with the same rater and key is
 * stored once). With `ownMessagesOnly` (set by the server for its users, never by a client) every
 * referenced reply must be in one of the rater's own conversations; another's reply is refused
 * as `unknown_message`, exactly like one that does not exist, so ids of others reveal nothing.
 *
 * The WebSocket protocol builds its judgement messages from {@link JUDGEMENT_FIELDS} (the same
 * fields and bounds, minus who the rater is, which the server knows), and reports a refused
 * field with the code {@link judgementIssue} gives it, so a judgement is validated by one schema.
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { FeedbackError, type FeedbackErrorCode } from './errors.ts';

export const MAX_COMMENT_CHARS = 2000;
export const MAX_CANDIDATES = 16;
export const THUMB_REASONS = ['not_factual', 'unhelpful', 'unsafe', 'too_long', 'other'] as const;
export const CHOICES = ['a', 'b', 'tie', 'both_bad'] as const;

const id = z.string().min(1).max(64);
/** Fields a client states about any judgement (who the rater is comes from the server). */
const clientCommon = {
  comment: z.string().max(MAX_COMMENT_CHARS).optional(),
  idempotencyKey: z.string().min(1).max(128).optional(),
};
const common = {
  raterId: z.string().min(1).max(128),
  keyId: z.string().min(1).max(64).optional(),
  sessionId: z.string().min(1).max(128).optional(),
  ownMessagesOnly: z.boolean().optional(),
  ...clientCommon,
};

/** What a client says in each kind of judgement: the one definition the wire schemas derive from. */
export const JUDGEMENT_FIELDS = {
  thumb: { messageId: id, value: z.enum(['up', 'down']), reason: z.enum(THUMB_REASONS).optional(), ...clientCommon },
  comparison: { contextId: id.optional(), a: id, b: id, choice: z.enum(CHOICES), ...clientCommon },
  ranking: { contextId: id.optional(), candidates: z.array(id).min(2).max(MAX_CANDIDATES), notRankable: z.boolean().optional(), ...clientCommon },
} as const;

const thumbInput = z.strictObject({ kind: z.literal('thumb'), ...JUDGEMENT_FIELDS.thumb, ...common });
const comparisonInput = z.strictObject({ kind: z.literal('comparison'), ...JUDGEMENT_FIELDS.comparison, ...common });
const rankingInput = z.strictObject({ kind: z.literal('ranking'), ...JUDGEMENT_FIELDS.ranking, ...common });

const judgementInput = z.discriminatedUnion('kind', [thumbInput, comparisonInput, rankingInput]);

export type ThumbInput = z.infer<typeof thumbInput>;
export type ComparisonInput = z.infer<typeof comparisonInput>;
export type RankingInput = z.infer<typeof rankingInput>;
/** A judgement as submitted. */
export type JudgementInput = z.infer<typeof judgementInput>;
/** A judgement as a client states it: everything but who the rater is (the server knows that). */
export type ClientJudgement = JudgementInput extends infer J ? (J extends unknown ? Omit<J, 'raterId' | 'keyId' | 'sessionId' | 'ownMessagesOnly'> : never) : never;

function codeFor(issue: z.core.$ZodIssue): FeedbackErrorCode {
  const field = issue.path[0];
  if (field === 'comment' && issue.code === 'too_big') return 'comment_too_long';
  if (field === 'candidates' && issue.path.length === 1) {
    if (issue.code === 'too_small') return 'too_few_candidates';
    if (issue.code === 'too_big') return 'too_many_candidates';
  }
  if (field === 'choice') return 'invalid_choice';
  if (field === 'value') return 'invalid_thumb';
  if (field === 'reason') return 'invalid_reason';
  return 'invalid_input';
}

function messageFor(code: FeedbackErrorCode, issue: z.core.$ZodIssue): string {
  switch (code) {
    case 'comment_too_long':
      return `comment is longer than ${MAX_COMMENT_CHARS} characters`;
    case 'too_few_candidates':
      return 'a ranking needs at least 2 candidates';
    case 'too_many_candidates':
      return `a ranking takes at most ${MAX_CANDIDATES} candidates`;
    case 'invalid_choice':
      return `choice must be one of ${CHOICES.join(', ')}`;
    case 'invalid_thumb':
      return 'value must be up or down';
    case 'invalid_reason':
      return `reason must be one of ${THUMB_REASONS.join(', ')}`;
    default:
      return `${issue.path.join('.') || 'judgement'}: ${issue.message}`;
  }
}

/** The stable code and message for a refused judgement field (the store's and the wire's). */
export function judgementIssue(issue: z.core.$ZodIssue): { code: FeedbackErrorCode; message: string } {
  const code = codeFor(issue);
  return { code, message: messageFor(code, issue) };
}

/** Validates one judgement; throws {@link FeedbackError} on bad input. */
export function parseJudgement(input: unknown): JudgementInput {
  const parsed = judgementInput.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const code = codeFor(issue);
    throw new FeedbackError(code, messageFor(code, issue));
  }
  const j = parsed.data;
  if (j.kind === 'thumb' && j.reason !== undefined && j.value === 'up') {
    throw new FeedbackError('invalid_reason', 'a reason is only given with a thumbs down');
  }
  if (j.kind === 'comparison' && j.a === j.b) {
    throw new FeedbackError('duplicate_candidate', 'a comparison needs two different replies');
  }
  if (j.kind === 'ranking' && new Set(j.candidates).size !== j.candidates.length) {
    throw new FeedbackError('duplicate_candidate', 'a ranking lists each reply once');
  }
  return j;
}

/** A hash of what was judged, ignoring the idempotency key and the ownership rule: equal retries hash equal. */
export function payloadHash(j: JudgementInput): string {
  const { idempotencyKey: _ignored, ownMessagesOnly: _rule, ...rest } = j;
  const canonical = JSON.stringify(rest, Object.keys(rest).sort());
  return createHash('sha256').update(canonical).digest('base64url');
}
