/**
 * `npm start`: serves the current champion (`MODEL_DIR`, default `checkpoints/sft`) on `PORT`
 * (default 8080). Every knob of `config.ts` can be set as `--key value` or an environment
 * variable (`MAX_BATCH=16`). Exits non-zero, with the checkpoint's stable error code, when the
 * model cannot be loaded.
 */
import { runCommand } from '../cli/command.ts';
import { SERVER_SECRETS, serverEnvironment, ServerConfigSchema, type ServerConfig } from './config.ts';
import { startServer } from './server.ts';

async function main(config: ServerConfig): Promise<void> {
  const server = await startServer(config);
  console.error(`listening on ${config.host}:${server.port} (loading the model)`);
  try {
    await server.ready;
  } catch (err) {
    const code = (err as { code?: string }).code;
    console.error(`cannot serve ${config.modelDir}: ${code ? `[${code}] ` : ''}${(err as Error).message}`);
    await server.close();
    process.exitCode = 1;
    return;
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.error(`${signal}: closing`);
    server.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

await runCommand({ usage: 'npm start -- [options]', schema: ServerConfigSchema, envPrefix: '', env: serverEnvironment(process.env), secrets: SERVER_SECRETS }, main);
