/**
 * The one config parser. Every entry point declares a zod object schema whose fields carry
 * a default and a one-line `.describe()`; `parseConfig` layers defaults < environment <
 * command line, rejects unknown keys, and returns a frozen object.
 *
 * Command line: `--key value`, `--key=value`, `--flag` (true) and `--no-flag` (false); keys may
 * be written camelCase or kebab-case. Environment: `PREFIX_KEY_NAME` (upper snake case).
 */
import { z } from 'zod';

export class ConfigError extends Error {
  readonly code = 'invalid_config';
}

const kebabToCamel = (s: string): string => s.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
const camelToSnake = (s: string): string => s.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
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

/** Splits argv into `--key value` pairs and positional arguments. */
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
 *   const cfg = parseConfig(Schema, { argv: process.argv.slice(2), env: process.env, envPrefix: 'PRETRAIN' });
 */
export function parseConfig<S extends z.ZodObject<z.ZodRawShape>>(
  schema: S,
  opts: {
    argv?: readonly string[];
    env?: Record<string, string | undefined>;
    envPrefix?: string;
    overrides?: Record<string, unknown>;
    /**
     * Knobs holding secrets, refused on the command line (where every user of the machine can read
     * them, in `ps` or /proc) and taken from the environment variable `env` instead: `always` (a
     * token), or `password` (a URL, refused only when it carries a password).
     */
    secrets?: Readonly<Record<string, { when: 'always' | 'password'; env: string }>>;
  } = {},
): Readonly<z.infer<S>> {
  const shape = schema.shape as Record<string, z.ZodType>;
  const input: Record<string, unknown> = {};
  if (opts.env && opts.envPrefix) {
    for (const key of Object.keys(shape)) {
      const v = opts.env[`${opts.envPrefix}_${camelToSnake(key)}`];
      if (v !== undefined) input[key] = coerce(v, shape[key]!);
    }
  }
  if (opts.overrides) Object.assign(input, opts.overrides);
  if (opts.argv) {
    const { flags, positional } = parseArgv(opts.argv);
    if (positional.length) throw new ConfigError(`unexpected argument "${positional[0]}"; options are --key value`);
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
  if (!result.success) {
    const msg = result.error.issues.map((i) => `${i.path.join('.') || '(config)'}: ${i.message}`).join('; ');
    throw new ConfigError(`invalid config: ${msg}`);
  }
  return Object.freeze(result.data) as Readonly<z.infer<S>>;
}

/** One line per knob: `--kebab-case` name, default (or `(none)` for an optional knob) and description, for `--help`. */
export function describeConfig(schema: z.ZodObject<z.ZodRawShape>): string {
  const shape = schema.shape as Record<string, z.ZodType>;
  return Object.entries(shape)
    .map(([key, field]) => {
      const parsed = field.safeParse(undefined);
      const def = !parsed.success ? '(required)' : parsed.data === undefined ? '(none)' : JSON.stringify(parsed.data);
      return `  --${camelToKebab(key).padEnd(22)} ${def.padEnd(12)} ${field.description ?? ''}`;
    })
    .join('\n');
}
