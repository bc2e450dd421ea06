/**
 * `/admin`: the model registry and the online loop, for the person who decides what chats get.
 * Every route needs `Authorization: Bearer <ADMIN_TOKEN>` (compared in constant time); with no
 * token configured every route answers `admin_disabled`. Every action is validated before it
 * changes anything, and logged (alias moves also in the append-only promotion log).
 *
 * Hardening: a token shorter than {@link MIN_ADMIN_TOKEN_LENGTH} refuses to start; wrong tokens
 * are throttled per client address (a burst of 5, then one try per 6 s: `rate_limited`, 429,
 * without even comparing the token); the actor recorded for every action is the credential
 * (`admin`), never a field of the request; the client address in the audit line is the socket's,
 * X-Forwarded-For only behind a configured trusted proxy (`trustProxy`). Tokens are never logged.
 * Bodies must be `application/json` (415 otherwise).
 * Routes, bodies, responses and error codes: the README (section "Admin").
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { Hono, type Context } from 'hono';
import { z } from 'zod';
import { arenaOutcomes, intervalHistory, summariseArena } from '../feedback/arena.ts';
import { listModelVersions, listPromotions, promote, resolveAlias, rollback, rollbackTarget } from '../feedback/model-versions.ts';
import type { FeedbackStore } from '../feedback/open-store.ts';
import { getRegistrySettings, setRegistrySetting } from '../feedback/registry-settings.ts';
import { getMetrics, getRun, listRuns } from '../feedback/runs.ts';
import type { RunKind } from '../feedback/schema.ts';
import { pairsByVersion, thumbsByVersion } from '../feedback/version-feedback.ts';
import { adminKeyRoutes } from './admin-keys.ts';
import { fitBradleyTerry } from './bradley-terry.ts';
import { ChatError } from './errors.ts';
import { jsonBody } from './json-body.ts';
import { POLICY_ALIASES, type ModelRegistry } from './model-registry.ts';
import { TokenBucket } from './rate-limit.ts';

/** The shortest ADMIN_TOKEN the server starts with. */
export const MIN_ADMIN_TOKEN_LENGTH = 16;
/** The actor the promotion log records for actions made with the admin token. */
export const ADMIN_ACTOR = 'admin';

export interface AdminDeps {
  token: string | undefined;
  registry: () => ModelRegistry | undefined;
  store: () => FeedbackStore | undefined;
  log: (line: string) => void;
  /** Called after an API key is created (`/admin/keys`). */
  onKeyCreated?: () => void;
  /** Behind a reverse proxy you trust: take the client address from X-Forwarded-For (default false). */
  trustProxy?: boolean;
}

const alias = z.string().min(1).max(128);
const promoteBody = z.strictObject({ versionId: z.string().min(1).max(128), alias: alias.default('champion'), reason: z.string().max(2000).optional() });
const rollbackBody = z.strictObject({ alias: alias.default('champion'), versionId: z.string().min(1).max(128).optional(), reason: z.string().max(2000).optional() });
const canaryBody = z.strictObject({ share: z.number().min(0).max(1) });
const arenaBody = z.strictObject({ share: z.number().min(0).max(1) });
const loopBody = z.strictObject({ reason: z.string().max(2000).optional() }).default({});

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Whether `header` carries the bearer token (constant time in the token's content). */
export function bearerMatches(header: string | undefined, token: string): boolean {
  const given = /^Bearer (.+)$/.exec(header ?? '')?.[1] ?? '';
  return timingSafeEqual(digest(given), digest(token));
}

const row = (p: { metrics_json: string | null } & Record<string, unknown>) => ({ ...p, metrics_json: undefined, metrics: p.metrics_json ? (JSON.parse(p.metrics_json) as unknown) : null });

/** The address of the client: the socket's, or X-Forwarded-For's first hop behind a trusted proxy. */
function clientAddress(c: Context, trustProxy: boolean): string {
  if (trustProxy) {
    const forwarded = c.req.header('x-forwarded-for')?.split(',')[0]?.trim();
    if (forwarded) return forwarded;
  }
  return (c.env as { incoming?: { socket?: { remoteAddress?: string } } } | undefined)?.incoming?.socket?.remoteAddress ?? 'unknown';
}

export function adminRoutes(deps: AdminDeps): Hono {
  if (deps.token !== undefined && deps.token.length < MIN_ADMIN_TOKEN_LENGTH) {
    throw new Error(`ADMIN_TOKEN is ${deps.token.length} characters; use at least ${MIN_ADMIN_TOKEN_LENGTH} (e.g. openssl rand -hex 24)`);
  }
  const app = new Hono();
  /** Failed-token buckets per address (bounded: the oldest entries go first). */
  const failures = new Map<string, TokenBucket>();
  const ready = () => {
    const registry = deps.registry();
    const store = deps.store();
    if (!registry || !store) throw new ChatError('not_ready', 'the model is loading', 503, 1);
    return { registry, store, db: store.db };
  };
  const audit = (c: Context, action: string, detail: unknown) => deps.log(`admin: ${action} by ${ADMIN_ACTOR} ${JSON.stringify(detail)} from ${clientAddress(c, deps.trustProxy === true)}`);

  app.use('*', async (c, next) => {
    if (deps.token === undefined) throw new ChatError('admin_disabled', 'admin routes are disabled: set ADMIN_TOKEN to enable them');
    const address = clientAddress(c, deps.trustProxy === true);
    const bucket = failures.get(address);
    if (bucket && !bucket.peek()) throw new ChatError('rate_limited', 'too many wrong admin tokens from this address; wait', 429, 6);
    if (!bearerMatches(c.req.header('authorization'), deps.token)) {
      let b = bucket;
      if (!b) {
        if (failures.size >= 10_000) failures.delete(failures.keys().next().value!);
        b = new TokenBucket(1 / 6, 5);
        failures.set(address, b);
      }
      b.take();
      audit(c, 'refused', { path: c.req.path, code: 'unauthorized' });
      throw new ChatError('unauthorized', 'missing or wrong bearer token', 401);
    }
    await next();
  });

  app.get('/versions', async (c) => {
    const { registry, db } = ready();
    const [versions, thumbs, aliases] = await Promise.all([listModelVersions(db), thumbsByVersion(db), Promise.all(POLICY_ALIASES.map(async (a) => [a, await resolveAlias(db, a)] as const))]);
    const byVersion = new Map(thumbs.map((t) => [t.versionId, t]));
    return c.json({
      serving: registry.state(),
      aliases: Object.fromEntries(aliases),
      versions: versions.map((v) => {
        const t = byVersion.get(v.id);
        return {
          id: v.id,
          kind: v.kind,
          stage: v.stage,
          parentId: v.parent_id,
          checkpoint: v.checkpoint,
          sha256: v.sha256,
          runId: v.run_id,
          createdAt: v.created_at,
          notes: v.notes,
          metrics: JSON.parse(v.metrics_json) as unknown,
          aliases: aliases.filter(([, id]) => id === v.id).map(([a]) => a),
          thumbs: { up: t?.up ?? 0, down: t?.down ?? 0, upRate: t && t.up + t.down ? t.up / (t.up + t.down) : null },
        };
      }),
    });
  });

  app.get('/promotions', async (c) => {
    const { db } = ready();
    const entries = await listPromotions(db, { alias: c.req.query('alias') || undefined });
    return c.json({ promotions: entries.map(row) });
  });

  app.post('/promote', async (c) => {
    const { registry, db } = ready();
    const b = await jsonBody(c, promoteBody);
    if (POLICY_ALIASES.includes(b.alias)) {
      registry.forgetFailure(b.versionId);
      await registry.prepare(b.versionId); // unknown_model_version, not_a_policy, checkpoint_corrupt, …
    }
    const entry = await promote(db, { alias: b.alias, versionId: b.versionId, actor: ADMIN_ACTOR, reason: b.reason });
    await registry.refresh();
    audit(c, 'promote', { alias: b.alias, versionId: b.versionId, from: entry.from_version_id });
    return c.json({ promotion: row(entry), serving: registry.state() });
  });

  app.post('/rollback', async (c) => {
    const { registry, db } = ready();
    const b = await jsonBody(c, rollbackBody);
    const { previous } = await rollbackTarget(db, b.alias, b.versionId);
    if (POLICY_ALIASES.includes(b.alias)) {
      registry.forgetFailure(previous);
      await registry.prepare(previous);
    }
    const entry = await rollback(db, { alias: b.alias, toVersionId: b.versionId, actor: ADMIN_ACTOR, reason: b.reason });
    await registry.refresh();
    audit(c, 'rollback', { alias: b.alias, from: entry.from_version_id, to: entry.to_version_id });
    return c.json({ promotion: row(entry), serving: registry.state() });
  });

  app.get('/canary', async (c) => {
    const { registry, db } = ready();
    const settings = await getRegistrySettings(db);
    return c.json({ share: settings.canary_share, candidate: (await resolveAlias(db, 'candidate')) ?? null, serving: registry.state() });
  });

  app.put('/canary', async (c) => {
    const { registry, db } = ready();
    const b = await jsonBody(c, canaryBody);
    await setRegistrySetting(db, 'canary_share', b.share);
    await registry.refresh();
    audit(c, 'canary', b);
    return c.json({ share: b.share, candidate: (await resolveAlias(db, 'candidate')) ?? null, serving: registry.state() });
  });

  /** The arena: its share, the live summary (null without a candidate and a champion), the interval after each judgement, thumbs of both versions. */
  const arenaView = async (db: FeedbackStore['db'], share: number) => {
    const [candidate, champion, thumbs] = await Promise.all([resolveAlias(db, 'candidate'), resolveAlias(db, 'champion'), thumbsByVersion(db)]);
    const outcomes = candidate && champion ? await arenaOutcomes(db, { candidate, champion }) : [];
    const byVersion = new Map(thumbs.map((t) => [t.versionId, t]));
    return {
      share,
      summary: candidate && champion ? summariseArena(outcomes, { candidate, champion }) : null,
      history: intervalHistory(outcomes),
      thumbs: [champion, candidate].filter((v): v is string => v !== undefined).map((versionId) => {
        const t = byVersion.get(versionId) ?? { up: 0, down: 0 };
        return { versionId, up: t.up, down: t.down, upRate: t.up + t.down ? t.up / (t.up + t.down) : null };
      }),
    };
  };

  app.get('/arena', async (c) => {
    const { db } = ready();
    return c.json(await arenaView(db, (await getRegistrySettings(db)).arena_share));
  });

  app.put('/arena', async (c) => {
    const { registry, db } = ready();
    const b = await jsonBody(c, arenaBody);
    await setRegistrySetting(db, 'arena_share', b.share);
    await registry.refresh();
    audit(c, 'arena', b);
    return c.json({ ...(await arenaView(db, b.share)), serving: registry.state() });
  });

  app.get('/feedback', async (c) => {
    const { registry, db } = ready();
    const reference = c.req.query('reference') || registry.champion.version;
    const [thumbs, pairs] = await Promise.all([thumbsByVersion(db), pairsByVersion(db)]);
    return c.json({
      thumbs: thumbs.map((t) => ({ ...t, upRate: t.up + t.down ? t.up / (t.up + t.down) : null })),
      pairs,
      bradleyTerry: { reference, interval: 0.95, strengths: fitBradleyTerry(pairs, reference) },
    });
  });

  for (const [path, paused] of [['/loop/pause', true], ['/loop/resume', false]] as const) {
    app.post(path, async (c) => {
      const { db } = ready();
      const b = await jsonBody(c, loopBody);
      await setRegistrySetting(db, 'loop_paused', paused);
      audit(c, paused ? 'loop.pause' : 'loop.resume', b);
      return c.json({ loopPaused: paused });
    });
  }

  app.get('/loop', async (c) => {
    const { db } = ready();
    const [settings, runs] = await Promise.all([getRegistrySettings(db), listRuns(db, { kind: 'loop' })]);
    return c.json({ loopPaused: settings.loop_paused, runs: runs.slice(0, 50).map(runJson) });
  });

  app.get('/runs', async (c) => {
    const { db } = ready();
    const kind = (c.req.query('kind') || undefined) as RunKind | undefined;
    return c.json({ runs: (await listRuns(db, kind ? { kind } : {})).slice(0, 200).map(runJson) });
  });

  app.get('/runs/:id', async (c) => {
    const { db } = ready();
    const run = await getRun(db, c.req.param('id'));
    if (!run) throw new ChatError('unknown_run', `no run ${c.req.param('id')}`);
    const names = c.req.query('names')?.split(',').filter(Boolean);
    const curves: Record<string, [number, number][]> = {};
    for (const m of await getMetrics(db, run.id, { names })) (curves[m.name] ??= []).push([m.step, m.value]);
    return c.json({ run: runJson(run), curves });
  });

  app.route('/keys', adminKeyRoutes({ store: deps.store, onCreated: deps.onKeyCreated, audit }));

  return app;
}

function runJson(r: { id: string; kind: string; status: string; config_json: string; base_version_id: string | null; output_version_id: string | null; error: string | null; started_at: string; finished_at: string | null }) {
  return { id: r.id, kind: r.kind, status: r.status, config: JSON.parse(r.config_json) as unknown, baseVersionId: r.base_version_id, outputVersionId: r.output_version_id, error: r.error, startedAt: r.started_at, finishedAt: r.finished_at };
}
