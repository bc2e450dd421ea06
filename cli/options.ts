/**
 * Option fragments shared by the commands, as zod shapes to spread into a command's config: one
 * name, one meaning and one help line per knob everywhere.
 *
 *  - {@link storeOptions} / {@link optionalStoreOptions}: `--database` (and `--database-schema`),
 *    the feedback store. `postgres://…`, `sqlite:<path>`, or `default` (= `DATABASE_URL`, else
 *    `data/feedback.sqlite`). Commands that always need the store default to `default`; those
 *    that can read a file instead (`--data`, `--prompts`) read the store only when it is given.
 *    A URL with a password is refused on the command line (`command.ts`).
 *  - {@link backendOptions}: `--backend`, the tensor backend (default: the best that loads, or
 *    `TF_BACKEND`).
 *  - {@link optimizerOptions}: `--lr --min-lr --warmup --weight-decay --grad-clip`, the AdamW
 *    schedule, with each command's own defaults.
 *  - {@link jsonOption}: `--json`, for commands that print figures.
 */
import { z } from 'zod';

const STORE = 'feedback store: postgres://…, sqlite:<path>, or "default" (DATABASE_URL, else data/feedback.sqlite)';
const SCHEMA = 'PostgreSQL only: schema of the store (created if missing; processes sharing a store use the same one)';

/** The store, always opened (default `default`). */
export const storeOptions = {
  database: z.string().min(1).default('default').describe(STORE),
  databaseSchema: z.string().min(1).optional().describe(SCHEMA),
};

/** The store, opened only when given (the command can read a file instead). */
export const optionalStoreOptions = {
  database: z.string().min(1).optional().describe(`${STORE}; unset: not read`),
};

/** `openStore` options for a `--database` value: `default` (or unset) leaves the choice to `DATABASE_URL`, else the default SQLite file. */
export function storeUrl(database: string | undefined): string | undefined {
  return database === undefined || database === 'default' ? undefined : database;
}

export const BACKENDS = ['tensorflow', 'wasm', 'cpu'] as const;

export const backendOptions = {
  backend: z.enum(BACKENDS).optional().describe(`force a tensor backend (${BACKENDS.join(', ')}); default: the best that loads, or TF_BACKEND`),
};

/** Defaults of {@link optimizerOptions}, per command. */
export interface OptimizerDefaults {
  lr: number;
  minLr: number;
  warmup: number;
  weightDecay: number;
  gradClip?: number;
}

/** The AdamW schedule: peak and final learning rate (cosine), warmup, weight decay, gradient clip. */
export function optimizerOptions(d: OptimizerDefaults) {
  return {
    lr: z.number().positive().default(d.lr).describe('peak learning rate'),
    minLr: z.number().nonnegative().default(d.minLr).describe('final learning rate (cosine)'),
    warmup: z.number().int().nonnegative().default(d.warmup).describe('warmup optimizer steps'),
    weightDecay: z.number().nonnegative().default(d.weightDecay).describe('AdamW weight decay on matrices'),
    gradClip: z.number().nonnegative().default(d.gradClip ?? 1).describe('global gradient-norm clip (0 = off)'),
  };
}

export const jsonOption = {
  json: z.boolean().default(false).describe('print figures as one JSON object per line on stdout'),
};
