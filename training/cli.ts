/**
 * Entry-point helpers for the training commands: run only when the file is the process's main
 * module, print `--help` from the config schema, and turn errors into one clear line and exit 1.
 */
import { pathToFileURL } from 'node:url';
import type { z } from 'zod';
import { describeConfig, parseConfig } from '../model/config.ts';

export function isMain(importMetaUrl: string): boolean {
  return importMetaUrl === pathToFileURL(process.argv[1] ?? '').href;
}

export async function runCli<S extends z.ZodObject<z.ZodRawShape>>(
  usage: string,
  schema: S,
  envPrefix: string,
  main: (cfg: Readonly<z.infer<S>>) => Promise<unknown>,
): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(`${usage}\n\nOptions (also ${envPrefix}_<NAME> in the environment):\n${describeConfig(schema)}`);
    return;
  }
  try {
    // A store URL may carry a password: the command line is readable by every user of the machine.
    const secrets = Object.fromEntries(['database', 'databaseUrl'].filter((k) => k in schema.shape).map((k) => [k, { when: 'password' as const, env: `${envPrefix}_${k === 'database' ? 'DATABASE' : 'DATABASE_URL'}` }]));
    await main(parseConfig(schema, { argv, env: process.env, envPrefix, secrets }));
  } catch (err) {
    const e = err as Error & { code?: string };
    console.error(`error${e.code ? ` [${e.code}]` : ''}: ${e.message}`);
    if (process.env.DEBUG) console.error(e.stack);
    process.exitCode = 1;
  }
}

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
