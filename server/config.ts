/**
 * The chat server's config: one frozen object, defaults < environment (unprefixed, e.g. `PORT`,
 * `MODEL_DIR`, `MAX_BATCH`; the store is `DATABASE_URL`) < command line (`--port 9000`). Parsed
 * by the project's one config parser (`cli/config.ts`).
 */
import { z } from 'zod';
import { parseConfig } from '../cli/config.ts';
import { storeOptions } from '../cli/options.ts';

export const ServerConfigSchema = z.object({
  port: z.number().int().min(0).max(65535).default(8080).describe('HTTP and WebSocket port (0 = ephemeral)'),
  host: z.string().default('127.0.0.1').describe('interface to listen on (a non-loopback host needs API keys or --allow-anonymous)'),
  allowAnonymous: z.boolean().default(false).describe('serve anonymous identities on a non-loopback host when no API key exists (local mode on a network)'),
  allowedOrigins: z.string().default('').describe('comma-separated Origins allowed to open /ws ("*" = any); empty = same origin only'),
  secureCookies: z.boolean().default(false).describe('mark the session and anonymous cookies Secure (serve over HTTPS)'),
  sessionTtlSeconds: z.number().int().positive().default(7 * 24 * 3600).describe('lifetime of a browser session made from an API key (POST /session)'),
  maxConnections: z.number().int().positive().default(2000).describe('WebSocket connections in total before upgrades get 503'),
  maxConnectionsPerAddress: z.number().int().positive().default(32).describe('WebSocket connections from one address before upgrades get 429'),
  startTimeoutMs: z.number().int().positive().default(15_000).describe('a socket that sends no "start" within this is closed (1008)'),
  maxInFlightPerUser: z.number().int().positive().default(4).describe('generation requests one identity may have queued or decoding at once ("overloaded" past it)'),
  judgementsPerMinute: z.number().int().positive().default(120).describe('judgements per identity per minute before rate_limited'),
  authFailuresPerMinute: z.number().int().positive().default(30).describe('failed key checks per address per minute before rate_limited'),
  modelDir: z.string().default('checkpoints/sft').describe('checkpoint directory of the model served'),
  dataDir: z.string().optional().describe('where the default SQLite store lives (default <project>/data)'),
  database: storeOptions.database,
  maxBatch: z.number().int().positive().default(32).describe('sequences decoded together in one step'),
  maxQueue: z.number().int().nonnegative().default(64).describe('requests waiting for a batch slot before "overloaded"'),
  asyncStep: z.boolean().default(false).describe('run the decode step on a native worker thread while the event loop streams and serves sockets (when the addon has it); off: on the event loop, which measured as fast or faster on 2 busy cores'),
  decodeSliceMs: z.number().nonnegative().max(1000).default(3).describe('decode steps run back to back for up to this long (or until a reply ends) before their text is streamed and sockets are served; 0 = one step per event-loop turn'),
  prefillTokensPerStep: z.number().int().positive().default(256).describe('prompt tokens prefilled between two decode steps (at least one prompt)'),
  maxMessageBytes: z.number().int().positive().default(64 * 1024).describe('largest WebSocket frame / HTTP body accepted'),
  maxPromptTokens: z.number().int().positive().default(4096).describe('largest prompt (before context-window trimming) accepted'),
  maxTokens: z.number().int().positive().default(256).describe('most tokens one reply may ask for'),
  defaultMaxTokens: z.number().int().positive().default(128).describe('reply length when the request names none'),
  minReplyTokens: z.number().int().positive().default(16).describe('context kept free for the reply when old turns are dropped'),
  rerankN: z.number().int().min(1).max(16).default(4).describe('best-of-n: a policy the online loop trained answers with the best of this many samples by the reward ensemble it was trained against (1 = off; the SFT model always samples one)'),
  maxN: z.number().int().positive().default(4).describe('most choices (`n`) per OpenAI request'),
  requestsPerMinute: z.number().int().positive().default(120).describe('generation requests per identity per minute'),
  messagesPerSecond: z.number().int().positive().default(50).describe('WebSocket messages (of every type) per identity per second before rate_limited'),
  floodCloseAfter: z.number().int().positive().default(200).describe('rate-limited WebSocket messages in a row before the socket is closed (1008)'),
  sessionCacheBytes: z.number().int().positive().default(256 * 1024 * 1024).describe('bytes of live conversation state (KV caches included) kept in memory'),
  heartbeatMs: z.number().int().positive().default(30_000).describe('WebSocket ping interval; a socket silent for one interval is terminated'),
  deltaCoalesceMs: z.number().int().nonnegative().default(4).describe('streamed text arriving within this of the previous frame of a reply is sent as one frame (0 = a frame per delta)'),
  maxSocketBufferBytes: z.number().int().positive().default(4 * 1024 * 1024).describe('unsent bytes a slow WebSocket reader may accumulate before it is closed'),
  retryAfterSeconds: z.number().int().positive().default(1).describe('Retry-After sent with "overloaded"'),
  adminToken: z.string().optional().describe('bearer token of the /admin routes (at least 16 characters; set it in the environment, not on the command line); unset = admin routes disabled'),
  trustProxy: z.boolean().default(false).describe('behind a trusted reverse proxy: take client addresses from X-Forwarded-For'),
  databaseSchema: storeOptions.databaseSchema,
  modelCacheBytes: z.number().int().positive().default(2 ** 30).describe('bytes of weights of the versions loaded on demand (an OpenAI request naming a version that is neither champion nor candidate); least recently used evicted first'),
  registryPollMs: z.number().int().positive().default(500).describe('how often the champion/candidate aliases are re-read (PostgreSQL also gets NOTIFY)'),
  loop: z.boolean().default(false).describe('run the online loop beside the server in a child process (LOOP=1 / --loop; knobs: LOOP_<NAME>)'),
});

export type ServerConfig = Readonly<z.infer<typeof ServerConfigSchema>>;

/** The server's secrets: refused on the command line, taken from these environment variables. */
export const SERVER_SECRETS = { adminToken: { when: 'always', env: 'ADMIN_TOKEN' }, database: { when: 'password', env: 'DATABASE_URL' } } as const;

/** The environment as the server reads it: unprefixed names, and the store from `DATABASE_URL` (as the README promises). */
export function serverEnvironment(env: NodeJS.ProcessEnv): Record<string, string | undefined> {
  return { ...env, DATABASE: env.DATABASE_URL };
}

/** Reads the server config from argv and the environment (`PORT`, `MODEL_DIR`, `DATABASE_URL`, …). */
export function loadServerConfig(argv: readonly string[] = process.argv.slice(2), env: NodeJS.ProcessEnv = process.env, overrides: Partial<ServerConfig> = {}): ServerConfig {
  return parseConfig(ServerConfigSchema, { argv, env: serverEnvironment(env), envPrefix: '', overrides, secrets: SERVER_SECRETS });
}

/** The config with every default (tests override what they need). */
export function defaultServerConfig(overrides: Partial<ServerConfig> = {}): ServerConfig {
  return parseConfig(ServerConfigSchema, { overrides });
}
