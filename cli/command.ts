/**
 * The entry-point kit every command uses: run only when the file is the process's main module,
 * answer `--help` (`-h`) from the config schema before anything is parsed or loaded (so it
 * never crashes), parse the rest with `config.ts` (`--kebab-case` flags, `PREFIX_UPPER_SNAKE`
 * environment variables, secrets refused on the command line), and turn a failure into one
 * line on stderr: `error [code]: message`, exit status 2 for a usage error, 1 otherwise.
 *
 * A command that prints figures takes `--json` from {@link jsonOption} like any other knob
 * (one JSON object per line on stdout); no command reads it off `process.argv`.
 *
 * @example
 *   const Config = z.object({ steps: z.number().int().default(100).describe('optimizer steps'), ...jsonOption });
 *   if (isMain(import.meta.url)) await runCommand({ usage: 'npm run pretrain -- [options]', schema: Config, envPrefix: 'PRETRAIN' }, train);
 */
import { pathToFileURL } from 'node:url';
import type { z } from 'zod';
import { camelToKebab, ConfigError, describeConfig, envName, parseArgv, parseConfig } from './config.ts';

export function isMain(importMetaUrl: string): boolean {
  return importMetaUrl === pathToFileURL(process.argv[1] ?? '').href;
}

/** What a command declares about itself. */
export interface CommandSpec<S extends z.ZodObject<z.ZodRawShape>> {
  /** First line(s) of `--help`: how the command is called. */
  usage: string;
  schema: S;
  /** Environment prefix of its knobs (`LOOP` → `LOOP_MIN_NEW_JUDGEMENTS`; `''`: unprefixed). */
  envPrefix: string;
  /**
   * Sub-commands taken as the first argument (`npm run keys -- create …`); the one given is
   * passed to `main`. Without one, `--help` is printed.
   */
  subcommands?: readonly string[];
  /** Positional arguments the command takes (their name in `usage`, e.g. `result.json…`); without it they are refused. */
  positionals?: string;
  /**
   * Knobs holding secrets (refused on the command line, taken from the environment variable
   * named); a `database` knob is always treated as a URL that may carry a password.
   */
  secrets?: Readonly<Record<string, { when: 'always' | 'password'; env: string }>>;
  /** The environment to read (default `process.env`). */
  env?: Record<string, string | undefined>;
}

/** The `--help` text of a command. */
export function helpText<S extends z.ZodObject<z.ZodRawShape>>(spec: CommandSpec<S>): string {
  const example = envName(spec.envPrefix, Object.keys(spec.schema.shape)[0] ?? 'name');
  return `${/^usage:/i.test(spec.usage) ? '' : 'usage: '}${spec.usage}\n\nOptions (each also ${envName(spec.envPrefix, 'upperSnake').replace('UPPER_SNAKE', '<UPPER_SNAKE>')} in the environment, e.g. ${example}):\n${describeConfig(spec.schema)}`;
}

/** The secrets of a spec: its own, plus the store URL when the schema has `database`. */
function secretsOf<S extends z.ZodObject<z.ZodRawShape>>(spec: CommandSpec<S>): NonNullable<CommandSpec<S>['secrets']> {
  const secrets: Record<string, { when: 'always' | 'password'; env: string }> = {};
  if ('database' in spec.schema.shape) secrets.database = { when: 'password', env: spec.envPrefix ? `${spec.envPrefix}_DATABASE or DATABASE_URL` : 'DATABASE_URL' };
  return { ...secrets, ...spec.secrets };
}

/** What argv held besides the knobs. */
export interface CommandArgs {
  /** The sub-command given (specs with `subcommands`). */
  subcommand?: string;
  /** The positional arguments (specs with `positionals`). */
  positionals: string[];
}

/**
 * Parses argv for `spec` and runs `main` with the frozen config (and the sub-command and
 * positional arguments, if the spec takes them). Never throws: errors set `process.exitCode`.
 */
export async function runCommand<S extends z.ZodObject<z.ZodRawShape>>(
  spec: CommandSpec<S>,
  main: (cfg: Readonly<z.infer<S>>, args: CommandArgs) => Promise<unknown>,
  argv: readonly string[] = process.argv.slice(2),
): Promise<void> {
  const args = [...argv];
  let subcommand: string | undefined;
  if (spec.subcommands && args[0] !== undefined && !args[0].startsWith('-')) subcommand = args.shift();
  if (args.includes('--help') || args.includes('-h') || (spec.subcommands && (subcommand === undefined || subcommand === 'help'))) {
    console.log(helpText(spec));
    return;
  }
  try {
    if (subcommand !== undefined && !spec.subcommands!.includes(subcommand)) {
      throw new ConfigError(`unknown command "${subcommand}"; one of ${spec.subcommands!.join(', ')}`);
    }
    const cfg = parseConfig(spec.schema, { argv: args, env: spec.env ?? process.env, envPrefix: spec.envPrefix, secrets: secretsOf(spec), positionals: spec.positionals !== undefined });
    await main(cfg, { ...(subcommand !== undefined ? { subcommand } : {}), positionals: spec.positionals !== undefined ? parseArgv(args).positional : [] });
  } catch (err) {
    const e = err as Error & { code?: string };
    console.error(`error${e.code ? ` [${e.code}]` : ''}: ${e.message}${err instanceof ConfigError ? ` (--help lists the options)` : ''}`);
    if (process.env.DEBUG) console.error(e.stack);
    process.exitCode = err instanceof ConfigError ? 2 : 1;
  }
}

/** Prints figures: one JSON object per line with `--json`, else one `key=value …` line each. */
export function printFigures(lines: readonly Record<string, unknown>[], json: boolean, print: (line: string) => void = (l) => console.log(l)): void {
  for (const line of lines) print(json ? JSON.stringify(line) : Object.entries(line).map(([k, v]) => `${k}=${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}`).join(' '));
}

/** `--name`, the command-line spelling of a knob (for messages). */
export const flag = (key: string): string => `--${camelToKebab(key)}`;

/** A flag set by the first Ctrl-C (SIGINT/SIGTERM), so training loops can save and stop; a second one exits at once. */
export function stopRequested(): () => boolean {
  let requested = false;
  const onSignal = () => {
    if (requested) process.exit(130);
    requested = true;
    console.error('\nstopping after this step (saving a checkpoint); press Ctrl-C again to quit at once');
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return () => requested;
}
