/**
 * Runs the online loop (training/loop-worker.ts) beside the server, in a child process: training
 * never blocks the server's event loop, a crash or a kill -9 of the loop leaves the server up (the
 * loop resumes its run from the last optimiser checkpoint when restarted), and the candidates the
 * loop offers and the arena verdicts it applies reach the server through the registry (aliases
 * polled / LISTENed by model-registry.ts).
 *
 * A worker thread would share the process; on Node 20 a Worker started with
 * `execArgv: ['--import', 'tsx']` does not load `.ts` entries, so a child process is used.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { storeUrl } from '../cli/options.ts';
import type { ServerConfig } from './config.ts';

export interface LoopHostOptions {
  /** Loop knobs (OnlineLoopConfig); LOOP_<NAME> in the environment sets the others. */
  loop?: Record<string, unknown>;
  log?: (line: string) => void;
  /** Grace period for the current PPO step to finish on `stop()` before SIGKILL (default 30 s). */
  stopTimeoutMs?: number;
}

export interface LoopHost {
  readonly child: ChildProcess;
  /** Resolves with the exit code when the loop process ends. */
  readonly exited: Promise<number | null>;
  /** Asks the loop to stop after its current step; kills it after the grace period. */
  stop(): Promise<void>;
}

export function startLoopProcess(config: ServerConfig, o: LoopHostOptions = {}): LoopHost {
  const log = o.log ?? ((l: string) => console.error(l));
  const entry = fileURLToPath(new URL('../training/loop-worker.ts', import.meta.url));
  // The database URL may carry a password: it goes through the child's environment (where the
  // store reads DATABASE_URL), never its command line, which any local user can read in `ps`.
  const store = { dataDir: config.dataDir, schema: config.databaseSchema };
  const env: NodeJS.ProcessEnv = { ...process.env };
  const url = storeUrl(config.database);
  if (url !== undefined) env.DATABASE_URL = url;
  const child = fork(entry, [JSON.stringify({ loop: o.loop ?? {}, store })], {
    // tsx as this module resolves it: a bare 'tsx' would be looked up from the working directory.
    execArgv: ['--import', import.meta.resolve('tsx')],
    env,
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
  });
  let buf = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line) log(line);
    }
  });
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => {
      if (buf) log(buf);
      resolve(code);
    });
  });
  child.on('error', (err) => log(`loop process: ${err.message}`));
  log(`online loop started in process ${child.pid}`);
  return {
    child,
    exited,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      if (child.connected) child.send({ type: 'stop' });
      const timer = setTimeout(() => child.kill('SIGKILL'), o.stopTimeoutMs ?? 30_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
