/**
 * Test fixture (run as a child process by `kill.test.ts`): serves the checkpoint at argv[2] from
 * the store at argv[3] (`sqlite:<file>` or a `postgres://` URL, with the schema in argv[4]) on
 * 127.0.0.1 at an ephemeral port, prints `ready <port>` and serves until killed.
 */
import { defaultServerConfig } from './config.ts';
import { startServer } from './server.ts';

const [modelDir, databaseUrl, databaseSchema] = process.argv.slice(2);
if (!modelDir || !databaseUrl) throw new Error('usage: kill-server-fixture.ts <model dir> <database url> [schema]');
const config = defaultServerConfig({ port: 0, host: '127.0.0.1', modelDir, database: databaseUrl, ...(databaseSchema ? { databaseSchema } : {}), requestsPerMinute: 1_000_000, judgementsPerMinute: 1_000_000, messagesPerSecond: 100_000, floodCloseAfter: 1_000_000 });
const srv = await startServer(config, { log: () => {}, defaultMetrics: false });
await srv.ready;
process.stdout.write(`ready ${srv.port}\n`);
