/**
 * `/admin/keys` (behind the admin token, mounted by admin-routes.ts):
 *
 *   POST   /admin/keys {userId?, name?}   → { key, info }: the plain key, shown this once
 *   GET    /admin/keys                    → { keys: [info…] } (no key, no hash)
 *   DELETE /admin/keys/:id                → revoke; body or query `excludeFromTraining`
 *   POST   /admin/keys/:id/revoke {reason?, excludeFromTraining?}   → the same
 *
 * Revoking stops the key (and its browser sessions) at once; `excludeFromTraining` also takes
 * every judgement made with it out of training and exports. Each action is written to the audit
 * log (never the key).
 */
import { Hono, type Context } from 'hono';
import { z } from 'zod';
import { createApiKey, listApiKeys, revokeApiKey } from '../feedback/api-keys.ts';
import type { FeedbackStore } from '../feedback/open-store.ts';
import { ChatError } from './errors.ts';
import { jsonBody } from './json-body.ts';

/** The actor recorded for key actions: the admin credential (as for promotions), never a body field. */
const ACTOR = 'admin';

export interface AdminKeyDeps {
  store: () => FeedbackStore | undefined;
  /** Called after a key is created (the server switches to keys mode). */
  onCreated?: () => void;
  audit: (c: Context, action: string, detail: unknown) => void;
}

const createBody = z.strictObject({ userId: z.string().min(1).max(128).optional(), name: z.string().max(200).optional() });
const revokeBody = z.strictObject({ reason: z.string().max(2000).optional(), excludeFromTraining: z.boolean().optional() });

export function adminKeyRoutes(deps: AdminKeyDeps): Hono {
  const app = new Hono();
  const db = () => {
    const store = deps.store();
    if (!store) throw new ChatError('not_ready', 'the store is loading', 503, 1);
    return store.db;
  };

  app.post('/', async (c) => {
    const b = await jsonBody(c, createBody);
    const { key, info } = await createApiKey(db(), b);
    deps.onCreated?.();
    deps.audit(c, 'key.create', { id: info.id, userId: info.userId, name: info.name });
    return c.json({ key, info }, 201);
  });

  app.get('/', async (c) => c.json({ keys: await listApiKeys(db()) }));

  const revoke = async (c: Context, b: z.output<typeof revokeBody>) => {
    const id = c.req.param('id')!;
    const r = await revokeApiKey(db(), id, { actor: ACTOR, reason: b.reason, excludeFromTraining: b.excludeFromTraining });
    deps.audit(c, b.excludeFromTraining ? 'key.revoke+exclude' : 'key.revoke', { id, reason: b.reason ?? null, excludedJudgements: r.excludedJudgements });
    return c.json(r);
  };
  app.post('/:id/revoke', async (c) => revoke(c, await jsonBody(c, revokeBody)));
  app.delete('/:id', async (c) => {
    const b = await jsonBody(c, revokeBody);
    const q = c.req.query('excludeFromTraining');
    return revoke(c, { ...b, ...(q !== undefined ? { excludeFromTraining: q === '1' || q === 'true' } : {}) });
  });

  return app;
}
