/**
 * The one config parser. Every entry point declares a zod object schema whose fields carry
 * a default and a one-line `.describe()`; `parseConfig` layers defaults < environment <
 * command line, rejects unknown keys, and returns a frozen object. Entry points reach it through
 * `command.ts`, which adds `--help` and the error line.
 *
 * Command line: `--kebab-case value`, `--kebab-case=value`, `--flag` (true) and `--no-flag`
 * (false); a camelCase flag is refused with its kebab-case spelling. Environment:
 * `PREFIX_UPPER_SNAKE` (`--min-new-judgements` is `LOOP_MIN_NEW_JUDGEMENTS`); an empty variable
 * counts as unset.
 */
import { z } from 'zod';

/** A command line or environment the config refuses (stable code `invalid_config`). */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly code = 'invalid_config';
}

const kebabToCamel = (s: string): string => s.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
/** `minNewJudgements` → `MIN_NEW_JUDGEMENTS`: the environment spelling of a knob (after the prefix). */
export const camelToSnake = (s: string): string => s.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
/** The environment variable of a knob: `PREFIX_UPPER_SNAKE`, or bare `UPPER_SNAKE` with the empty prefix (the server's `PORT`). */
export const envName = (prefix: string, key: string): string => (prefix ? `${prefix}_${camelToSnake(key)}` : camelToSnake(key));
/** `minNewJudgements` → `min-new-judgements`: how every option is written on the command line. */
export const camelToKebab = (s: string): string => s.replace(/([a-z0-9])([A-Z])/g, '$1-$2').toLowerCase();

function coerce(raw: string, field: z.ZodType): unknown {
  let inner: z.ZodType = field;
  while (inner instanceof z.ZodDefault || inner instanceof z.ZodOptional) {
    inner = (inner as z.ZodDefault<z.ZodType> | z.ZodOptional<z.ZodType>).unwrap() as z.ZodType;
  }
  if (inner instanceof z.ZodNumber) {
    const n = Number(raw);
    return raw.trim() === '' || Number.isNaN(n) ? raw : n;
  }
  if (inner instanceof z.ZodBoolean) {
    if (raw === 'true' || raw === '1') return true;
    if (raw === 'false' || raw === '0') return false;
    return raw;
  }
  return raw;
}

function urlHasPassword(value: string): boolean {
  try {
    return new URL(value).password !== '';
  } catch {
    return false;
  }
}

/** One refused knob, named as it is written on the command line: `--rounds: expected number, received string`. */
function describeIssue(issue: z.core.$ZodIssue, input: Record<string, unknown>): string {
  const key = issue.path[0];
  if (key === undefined) return `invalid config: ${issue.message}`;
  const name = `--${camelToKebab(String(key))}`;
  if (issue.code === 'invalid_value') return `${name} must be one of ${issue.values.map(String).join(', ')}, got ${JSON.stringify(input[String(key)])}`;
  return `${name}: ${issue.message}`;
}

/** Splits argv into `--key value` pairs (keys camelCased) and positional arguments; throws {@link ConfigError} on a flag not in kebab-case. */
export function parseArgv(argv: readonly string[]): { flags: Map<string, string | boolean>; positional: string[] } {
  const flags = new Map<string, string | boolean>();
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) {
      positional.push(arg);
      continue;
    }
    const body = arg.slice(2);
    const eq = body.indexOf('=');
    const name = eq >= 0 ? body.slice(0, eq) : body;
    if (/[A-Z_]/.test(name)) throw new ConfigError(`options are written in kebab-case: --${camelToKebab(name.replace(/_/g, '-'))}, not --${name}`);
    if (eq >= 0) flags.set(kebabToCamel(body.slice(0, eq)), body.slice(eq + 1));
    else if (body.startsWith('no-')) flags.set(kebabToCamel(body.slice(3)), false);
    else {
      const next = argv[i + 1];
      if (next !== undefined && !next.startsWith('--')) {
        flags.set(kebabToCamel(body), next);
        i++;
      } else flags.set(kebabToCamel(body), true);
    }
  }
  return { flags, positional };
}

/**
 * Parses a config from defaults, environment and command line.
 *
 * @example
 *   const Schema = z.object({ steps: z.number().int().default(100).describe('optimizer steps') });
 *   const cfg = parseConfig(Schema, { argv: ['--steps', '10'], env: process.env, envPrefix: 'PRETRAIN' });
 */
export function parseConfig<S extends z.ZodObject<z.ZodRawShape>>(
  schema: S,
  opts: {
    argv?: readonly string[];
    env?: Record<string, string | undefined>;
    /** Prefix of the environment variables (`''`: unprefixed, as the server's `PORT`). */
    envPrefix?: string;
    overrides?: Record<string, unknown>;
    /**
     * Knobs holding secrets, refused on the command line (where every user of the machine can read
     * them, in `ps` or /proc) and taken from the environment variable `env` instead: `always` (a
     * token), or `password` (a URL, refused only when it carries a password).
     */
    secrets?: Readonly<Record<string, { when: 'always' | 'password'; env: string }>>;
    /** Accept positional arguments (the caller reads them with {@link parseArgv}); default: refuse them. */
    positionals?: boolean;
  } = {},
): Readonly<z.infer<S>> {
  const shape = schema.shape as Record<string, z.ZodType>;
  const input: Record<string, unknown> = {};
  if (opts.env && opts.envPrefix !== undefined) {
    for (const key of Object.keys(shape)) {
      const v = opts.env[envName(opts.envPrefix, key)];
      if (v !== undefined && v !== '') input[key] = coerce(v, shape[key]!);
    }
  }
  if (opts.overrides) Object.assign(input, opts.overrides);
  if (opts.argv) {
    const { flags, positional } = parseArgv(opts.argv);
    if (positional.length && !opts.positionals) throw new ConfigError(`unexpected argument "${positional[0]}"; options are --key value`);
    for (const [key, value] of flags) {
      if (!(key in shape)) {
        throw new ConfigError(`unknown option --${camelToKebab(key)}; known: ${Object.keys(shape).map((k) => '--' + camelToKebab(k)).join(' ')}`);
      }
      const secret = opts.secrets?.[key];
      if (secret && (secret.when === 'always' || (typeof value === 'string' && urlHasPassword(value)))) {
        throw new ConfigError(`--${camelToKebab(key)} holds a secret: set it in the environment (${secret.env}), not on the command line, where other users of the machine can read it`);
      }
      input[key] = typeof value === 'boolean' ? value : coerce(value, shape[key]!);
    }
  }
  const result = schema.strict().safeParse(input);
  if (!result.success) throw new ConfigError(result.error.issues.map((i) => describeIssue(i, input)).join('; '));
  return Object.freeze(result.data) as Readonly<z.infer<S>>;
}

/** One line per knob: `--kebab-case` name, default (or `(none)` for an optional knob) and description, for `--help`. */
export function describeConfig(schema: z.ZodObject<z.ZodRawShape>): string {
  const shape = schema.shape as Record<string, z.ZodType>;
  return Object.entries(shape)
    .map(([key, field]) => {
      const parsed = field.safeParse(undefined);
      const def = !parsed.success ? '(required)' : parsed.data === undefined ? '(none)' : (JSON.stringify(parsed.data) ?? String(parsed.data));
      return `  --${camelToKebab(key).padEnd(22)} ${def.padEnd(12)} ${field.description ?? ''}`;
    })
    .join('\n');
}
