/**
 * The story's servers: `server/main.ts` as a child process on an ephemeral port of 127.0.0.1,
 * with its own store and an admin token handed over through the environment (never the command
 * line), and the two HTTP calls the story makes as an admin or a monitor would: the served version
 * (`/healthz`) and the arena share (`PUT /admin/arena`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/**
 * Per-identity limits raised for the simulation (environment variables; a server without such a
 * knob ignores them): a handful of simulated users stand for a crowd, and the final comparison
 * keeps several requests in flight on one socket.
 */
const SIMULATION_LIMITS = { JUDGEMENTS_PER_MINUTE: '1000000', MAX_IN_FLIGHT_PER_USER: '64' };

export interface ServerChild {
  child: ChildProcess;
  port: number;
  wsUrl: string;
  httpUrl: string;
  /** The server's ADMIN_TOKEN (random per child). */
  adminToken: string;
  stop(): Promise<void>;
}

/** Starts a server and waits for /healthz; `log` gets its last output if it exits. */
export async function startServerProcess(o: { modelDir: string; databaseUrl: string; name: string; log: (l: string) => void; rerankN?: number }): Promise<ServerChild> {
  const adminToken = randomBytes(24).toString('hex');
  const args = ['--import', 'tsx', 'server/main.ts', '--port', '0', '--host', '127.0.0.1', '--model-dir', o.modelDir, '--requests-per-minute', '1000000', '--messages-per-second', '100000', ...(o.rerankN !== undefined ? ['--rerank-n', String(o.rerankN)] : [])];
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, DATABASE_URL: o.databaseUrl, ADMIN_TOKEN: adminToken, LOOP: '', ...SIMULATION_LIMITS } });
  let err = '';
  const reap = (): void => void child.kill('SIGKILL');
  process.once('exit', reap);
  child.once('exit', () => process.off('exit', reap));
  const port = await new Promise<number>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`${o.name} server did not start within 60 s:\n${err}`)), 60_000);
    child.stderr!.on('data', (d) => {
      err = (err + String(d)).slice(-20_000);
      const m = err.match(/listening on [^:\s]+:(\d+)/);
      if (m) (clearTimeout(timer), res(Number(m[1])));
    });
    child.once('exit', (code) => (clearTimeout(timer), rej(new Error(`${o.name} server exited (${code}):\n${err}`))));
  });
  let stopping = false;
  child.once('exit', (code, signal) => void (stopping || o.log(`${o.name} server exited (${code ?? signal}); its last output:\n${err.slice(-3000)}`)));
  const httpUrl = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    const r = await fetch(`${httpUrl}/healthz`).catch(() => undefined);
    if (r?.ok) break;
    if (i > 600 || child.exitCode !== null) throw new Error(`${o.name} server never became healthy:\n${err}`);
    await new Promise((r2) => setTimeout(r2, 100));
  }
  return {
    child, port, httpUrl, adminToken, wsUrl: `ws://127.0.0.1:${port}/ws`,
    stop: () => new Promise<void>((res) => {
      stopping = true;
      if (child.exitCode !== null) return res();
      child.once('exit', () => res());
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
    }),
  };
}

/**
 * Retries network errors: after the loop has held this process's event loop for seconds, the
 * pooled keep-alive connection may be one the server already closed.
 */
async function http(url: string, init?: RequestInit): Promise<Response> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fetch(url, init);
    } catch (e) {
      if (attempt >= 3) throw new Error(`${init?.method ?? 'GET'} ${url}: ${(e as Error).message} (${String(((e as Error).cause as Error | undefined)?.message ?? '')})`);
    }
  }
}

/** The version a server serves (its champion). */
export async function servedVersion(s: Pick<ServerChild, 'httpUrl'>): Promise<string> {
  const r = (await (await http(`${s.httpUrl}/healthz`)).json()) as { modelVersion?: string };
  return String(r.modelVersion);
}

/** Waits (up to `ms`) until the server serves `version`; returns what it serves then. */
export async function awaitServed(s: Pick<ServerChild, 'httpUrl'>, version: string, ms = 20_000): Promise<string> {
  const until = Date.now() + ms;
  for (;;) {
    const v = await servedVersion(s);
    if (v === version || Date.now() > until) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** What the server has loaded (`GET /admin/canary`'s `serving`): its champion and its candidate. */
export async function servingState(s: Pick<ServerChild, 'httpUrl' | 'adminToken'>): Promise<{ champion: string; candidate?: string; arenaShare?: number }> {
  const r = await http(`${s.httpUrl}/admin/canary`, { headers: { authorization: `Bearer ${s.adminToken}` } });
  if (!r.ok) throw new Error(`GET /admin/canary: ${r.status} ${await r.text()}`);
  return ((await r.json()) as { serving: { champion: string; candidate?: string; arenaShare?: number } }).serving;
}

/** Waits (up to `ms`) until the server has loaded `champion` and `candidate` (undefined: none); returns what it has then. */
export async function awaitServing(s: Pick<ServerChild, 'httpUrl' | 'adminToken'>, want: { champion: string; candidate: string | undefined }, ms = 30_000): Promise<{ champion: string; candidate?: string }> {
  const until = Date.now() + ms;
  for (;;) {
    const st = await servingState(s);
    if ((st.champion === want.champion && st.candidate === want.candidate) || Date.now() > until) return st;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** `PUT /admin/arena {share}` as the admin: the share of `compare` requests answered by a blind champion-vs-candidate pair. */
export async function setArenaShare(s: Pick<ServerChild, 'httpUrl' | 'adminToken'>, share: number): Promise<void> {
  const r = await http(`${s.httpUrl}/admin/arena`, { method: 'PUT', headers: { authorization: `Bearer ${s.adminToken}`, 'content-type': 'application/json' }, body: JSON.stringify({ share }) });
  if (!r.ok) throw new Error(`PUT /admin/arena: ${r.status} ${await r.text()}`);
}
