/**
 * `/session`: how the web page learns who it is and signs in.
 *
 *   GET    /session            → { keysRequired, user: { id, anonymous } | null }; in local mode it
 *                                also issues the anonymous cookie when the browser has none.
 *   POST   /session {apiKey}   → { user } and an HttpOnly, SameSite=Strict session cookie
 *                                (`invalid_api_key` 401 otherwise); the key itself is not kept.
 *   DELETE /session            → ends the session and clears its cookie.
 *
 * The cookie is then sent with the WebSocket upgrade, which is where the identity is taken.
 */
import { Hono, type Context } from 'hono';
import { z } from 'zod';
import type { Auth } from './auth.ts';
import { ChatError } from './errors.ts';

const signIn = z.strictObject({ apiKey: z.string().min(1).max(256) });

function address(c: Context): string {
  return (c.env as { incoming?: { socket?: { remoteAddress?: string } } } | undefined)?.incoming?.socket?.remoteAddress ?? 'unknown';
}

export function sessionRoutes(auth: Auth): Hono {
  const app = new Hono();

  app.get('/', async (c) => {
    const keysRequired = await auth.keysRequired();
    try {
      const { identity, setCookie } = await auth.forSocket({ cookie: c.req.header('cookie'), address: address(c) });
      if (setCookie) c.header('Set-Cookie', setCookie);
      return c.json({ keysRequired, user: { id: identity.userId, anonymous: identity.anonymous } });
    } catch (err) {
      if (err instanceof ChatError && err.code === 'invalid_api_key') return c.json({ keysRequired, user: null });
      throw err;
    }
  });

  app.post('/', async (c) => {
    let raw: unknown;
    try {
      raw = await c.req.json();
    } catch {
      throw new ChatError('invalid_json', 'the body is not valid JSON');
    }
    const b = signIn.safeParse(raw);
    if (!b.success) throw new ChatError('invalid_request', 'send {"apiKey": "rk_…"}');
    const { identity, setCookie } = await auth.createSession(b.data.apiKey, address(c));
    c.header('Set-Cookie', setCookie);
    return c.json({ user: { id: identity.userId, anonymous: false } });
  });

  app.delete('/', (c) => {
    c.header('Set-Cookie', auth.endSession(c.req.header('cookie')));
    return c.json({ user: null });
  });

  return app;
}
