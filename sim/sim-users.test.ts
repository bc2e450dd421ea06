import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { openTempStore } from '../feedback/temp-store.ts';
import type { FeedbackStore } from '../feedback/index.ts';
import { startTestServer, type TestServer } from '../server/test-support.ts';
import { GoldRubric } from './gold-rubric.ts';
import { SimUser, runPopulation } from './sim-users.ts';
import { WsClient, WsError } from '../client/ws-client.ts';

const PROMPTS = [
  { prompt: 'What does lucid mean?', word: 'lucid', gloss: 'clear and easy to understand' },
  { prompt: 'What does the cat mean?', word: 'cat', gloss: 'sat on the mat' },
];
let srv: TestServer;
let store: FeedbackStore;

before(async () => {
  store = await openTempStore({ prefix: 'sim' });
  srv = await startTestServer({}, { store, modelConfig: { blockSize: 128 } });
});
after(async () => srv.close());

test('a simulated user leaves a thumb, a comparison and a ranking that end up in the store', async () => {
  const socket = await WsClient.connect(srv.wsUrl);
  try {
    // A tiny random model's replies mostly score alike on the real rubric; this one tells every reply apart.
    let calls = 0;
    const distinct = new (class extends GoldRubric {
      override score(): number {
        return ++calls;
      }
    })(PROMPTS);
    const user = new SimUser('sim-a', socket, distinct, 1, { params: { maxTokens: 12 }, rankSize: 3 });
    const rater = socket.identity ?? 'sim-a';
    const thumb = await user.session(PROMPTS[0]!, 'thumb');
    const cmp = await user.session(PROMPTS[0]!, 'comparison');
    const rank = await user.session(PROMPTS[1]!, 'ranking');

    const t = await store.db.selectFrom('thumbs').selectAll().where('id', '=', thumb.feedbackId).executeTakeFirstOrThrow();
    assert.equal(t.rater_id, rater);
    assert.equal(t.message_id, thumb.replies[0]!.messageId);
    assert.equal(t.value, thumb.judgement);

    const c = await store.db.selectFrom('comparisons').selectAll().where('id', '=', cmp.feedbackId).executeTakeFirstOrThrow();
    assert.equal(c.rater_id, rater);
    assert.deepEqual([c.a_id, c.b_id], cmp.replies.map((r) => r.messageId));
    assert.equal(c.choice, cmp.judgement);
    assert.notEqual(cmp.replies[0]!.messageId, cmp.replies[1]!.messageId);

    const items = await store.db.selectFrom('ranking_items').selectAll().where('ranking_id', '=', rank.feedbackId).orderBy('position').execute();
    assert.equal(items.length, 3);
    const order = rank.judgement as number[];
    assert.deepEqual(items.map((i) => i.message_id), order.map((i) => rank.replies[i]!.messageId));
    assert.equal(new Set(rank.replies.map((r) => r.messageId)).size, 3);
    assert.equal(rank.gold.length, 3);
  } finally {
    socket.close();
  }
});

test('replies the user cannot tell apart: a tie, and a ranking marked not rankable', async () => {
  const socket = await WsClient.connect(srv.wsUrl);
  try {
    const flat = new (class extends GoldRubric {
      override score(): number {
        return 1;
      }
    })(PROMPTS);
    const user = new SimUser('sim-b', socket, flat, 2, { params: { maxTokens: 8 } });
    const cmp = await user.session(PROMPTS[0]!, 'comparison');
    assert.equal(cmp.judgement, 'tie');
    assert.equal((await store.db.selectFrom('comparisons').select('choice').where('id', '=', cmp.feedbackId).executeTakeFirstOrThrow()).choice, 'tie');
    const rank = await user.session(PROMPTS[0]!, 'ranking');
    assert.deepEqual(rank.judgement, []);
    assert.equal((await store.db.selectFrom('rankings').select('not_rankable').where('id', '=', rank.feedbackId).executeTakeFirstOrThrow()).not_rankable, 1);
  } finally {
    socket.close();
  }
});

test('a population runs a bounded number of sessions, all acknowledged', async () => {
  const before = await countJudgements();
  const out = await runPopulation(srv.wsUrl, { users: 3, sessions: 7, prompts: PROMPTS, rubric: new GoldRubric(PROMPTS), seed: 2, userOptions: { params: { maxTokens: 8 } } });
  assert.equal(out.length, 7);
  assert.equal((await countJudgements()) - before, 7);
  assert.ok(out.every((s) => s.feedbackId.length > 0));
});

test('server errors reject the request with their stable code', async () => {
  const socket = await WsClient.connect(srv.wsUrl);
  try {
    await assert.rejects(socket.feedback({ type: 'thumb', messageId: 'nope', value: 'up' }), (e: unknown) => e instanceof WsError && e.code === 'unknown_message');
  } finally {
    socket.close();
  }
});

async function countJudgements(): Promise<number> {
  let n = 0;
  for (const t of ['thumbs', 'comparisons', 'rankings'] as const) {
    const r = await store.db.selectFrom(t).select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
    n += Number(r.n);
  }
  return n;
}
