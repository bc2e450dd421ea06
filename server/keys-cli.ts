/**
 * `npm run keys -- <command> [options]`: the admin's API keys, straight on the store (the same
 * one the server uses: `--database`, else `DATABASE_URL`, else the default SQLite file; a
 * PostgreSQL password belongs in `DATABASE_URL`, never on the command line).
 *
 *   npm run keys -- create --user alice [--name laptop]   prints the key (shown this once)
 *   npm run keys -- list                                   id, user, name, prefix, state
 *   npm run keys -- revoke --id key_… [--reason …] [--exclude-from-training]
 *
 * A running server switches to keys mode within 2 s of the first key.
 */
import { z } from 'zod';
import { createApiKey, listApiKeys, revokeApiKey, type ApiKeyInfo } from '../feedback/api-keys.ts';
import { openStore } from '../feedback/open-store.ts';
import { isMain, runCommand } from '../cli/command.ts';
import { storeOptions, storeUrl } from '../cli/options.ts';

export const COMMANDS = ['create', 'list', 'revoke'] as const;

export const KeysConfig = z.object({
  user: z.string().optional().describe('create: the user the key names (default: a user of its own)'),
  name: z.string().optional().describe('create: a label for people (e.g. the device)'),
  id: z.string().optional().describe('revoke: the key id (key_…)'),
  reason: z.string().optional().describe('revoke: why (kept with the key and in the log)'),
  excludeFromTraining: z.boolean().default(false).describe('revoke: also exclude every judgement made with the key from training'),
  database: storeOptions.database,
  databaseSchema: storeOptions.databaseSchema,
  actor: z.string().default('keys-cli').describe('who revokes (recorded with the key)'),
});
export type KeysConfig = z.infer<typeof KeysConfig>;

const line = (k: ApiKeyInfo) =>
  [k.id, k.userId, k.name ?? '-', `${k.prefix}…`, k.revokedAt ? `revoked ${k.revokedAt}${k.excludedFromTraining ? ' (excluded from training)' : ''}` : 'active'].join('\t');

/** Runs one command; `print` gets stdout lines, `log` stderr lines. */
export async function runKeys(command: string, cfg: Readonly<KeysConfig>, print: (l: string) => void, log: (l: string) => void): Promise<void> {
  if (!(COMMANDS as readonly string[]).includes(command)) throw Object.assign(new Error(`unknown command "${command}"; one of ${COMMANDS.join(', ')}`), { code: 'invalid_argument' });
  const store = await openStore({ url: storeUrl(cfg.database), ...(cfg.databaseSchema ? { schema: cfg.databaseSchema } : {}) });
  try {
    if (command === 'create') {
      const { key, info } = await createApiKey(store.db, { ...(cfg.user ? { userId: cfg.user } : {}), ...(cfg.name ? { name: cfg.name } : {}) });
      log(`created ${info.id} for user ${info.userId}; the key is shown this once:`);
      print(key);
    } else if (command === 'list') {
      for (const k of await listApiKeys(store.db)) print(line(k));
    } else {
      if (!cfg.id) throw Object.assign(new Error('revoke needs --id key_…'), { code: 'invalid_argument' });
      const r = await revokeApiKey(store.db, cfg.id, { actor: cfg.actor, reason: cfg.reason, excludeFromTraining: cfg.excludeFromTraining });
      log(`revoked ${cfg.id}${cfg.excludeFromTraining ? `; ${r.excludedJudgements} judgements excluded from training` : ''}`);
      print(line(r.info));
    }
  } finally {
    await store.close();
  }
}

if (isMain(import.meta.url)) {
  const usage = `npm run keys -- <${COMMANDS.join('|')}> [options]\n  create --user alice [--name laptop]\n  list\n  revoke --id key_… [--reason …] [--exclude-from-training]`;
  await runCommand({ usage, schema: KeysConfig, envPrefix: 'KEYS', subcommands: COMMANDS }, (cfg, { subcommand }) => runKeys(subcommand!, cfg, (l) => console.log(l), (l) => console.error(l)));
}
