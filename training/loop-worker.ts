/**
 * The online loop as a child process of the chat server (`LOOP=1` / `--loop`; see
 * server/loop-host.ts). It opens its own store connection and tensor backend, runs
 * `onlineLoop` (which honours the admin's pause flag between iterations) and stops cleanly
 * after the current optimiser step when the server sends `{type:'stop'}`, closes the IPC channel
 * (the server went away) or signals SIGTERM/SIGINT. What it changes reaches the server through
 * the registry's aliases: a candidate it offers (`candidate`, which the arena pits against the
 * champion) and, with LOOP_AUTO_PROMOTE=1, the users' arena verdicts it applies (`champion`
 * moves, or the candidate is cleared). Log lines go to stderr.
 *
 *   argv[2]: JSON `{ loop: Partial<OnlineLoopConfig>, store: StoreOptions }`; LOOP_<NAME> in the
 *   environment sets any loop knob the JSON leaves out.
 *
 * The loop takes what the server leaves of the CPU: its process runs at a low priority (nice 10:
 * about a tenth of a default process's share of a core both want) and its native kernels on one
 * thread (`TF_NATIVE_THREADS`, unless the environment sets it), so a server serving 16 streams
 * keeps most of its idle throughput while PPO runs, and the loop still gets the idle time.
 */
import { setPriority } from 'node:os';
import { parseConfig } from '../cli/config.ts';
import type { StoreOptions } from '../feedback/open-store.ts';
import { OnlineLoopConfig, onlineLoop } from './online-loop.ts';

interface WorkerArgs {
  loop?: Partial<OnlineLoopConfig>;
  store?: StoreOptions;
}

const args = JSON.parse(process.argv[2] ?? '{}') as WorkerArgs;
const cfg = parseConfig(OnlineLoopConfig, { env: process.env, envPrefix: 'LOOP', overrides: args.loop ?? {} });
let stop = false;
const requestStop = () => {
  stop = true;
};
process.on('message', (m) => {
  if ((m as { type?: string }).type === 'stop') requestStop();
});
process.on('disconnect', requestStop);
process.on('SIGTERM', requestStop);
process.on('SIGINT', requestStop);
const log = (line: string) => console.error(line);
// Before the tensor backend loads: the native thread pool reads this when it is created.
process.env.TF_NATIVE_THREADS ??= '1';
try {
  setPriority(10);
} catch (err) {
  log(`loop: could not lower the loop's CPU priority (${(err as Error).message}); it competes with the server`);
}
try {
  await onlineLoop(cfg, { log, shouldStop: () => stop, store: args.store });
  log('loop: stopped');
} catch (err) {
  log(`loop: error: ${(err as Error).message}`);
  process.exitCode = 1;
} finally {
  process.disconnect?.();
}
