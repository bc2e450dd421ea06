import assert from 'node:assert/strict';
import { test } from 'node:test';
import { addMessage, createConversation, getThread, listChildren, listMessages, startThreadRows } from './conversations.ts';
import { inTransaction } from './transaction.ts';
import { FeedbackError } from './errors.ts';
import { addAssistantReply, getGeneration, recordGeneration } from './generations.ts';
import { describeEachDialect } from './test-support.ts';

const code = (c: string) => (err: unknown) => err instanceof FeedbackError && err.code === c;

await describeEachDialect('conversations', (ctx) => {
  test('keeps messages as a tree: regenerated replies are siblings, a thread is root to message', async () => {
    const db = ctx.store().db;
    const conv = await createConversation(db, { userId: 'u1', sessionId: 's1', title: 'words' });
    const q = await addMessage(db, { conversationId: conv.id, role: 'user', content: 'Define cat.', userId: 'u1', sessionId: 's1', tokenCount: 3 });
    const a1 = await addMessage(db, { conversationId: conv.id, parentId: q.id, role: 'assistant', content: 'A small feline.' });
    const a2 = await addMessage(db, { conversationId: conv.id, parentId: q.id, role: 'assistant', content: 'A pet.' });
    const q2 = await addMessage(db, { conversationId: conv.id, parentId: a2.id, role: 'user', content: 'Use it in a sentence.' });
    assert.deepEqual((await listChildren(db, q.id)).map((m) => m.id), [a1.id, a2.id]);
    assert.deepEqual((await getThread(db, q2.id)).map((m) => m.content), ['Define cat.', 'A pet.', 'Use it in a sentence.']);
    assert.deepEqual(await getThread(db, 'missing'), []);
    const all = await listMessages(db, conv.id);
    assert.equal(all.length, 4);
    assert.deepEqual([all[0]!.user_id, all[0]!.session_id, all[0]!.token_count], ['u1', 's1', 3]);
  });

  test('stores NUL in text as U+FFFD on both dialects (PostgreSQL text cannot hold it), in messages, titles and judgement comments', async () => {
    const db = ctx.store().db;
    const conv = await createConversation(db, { userId: 'u-nul', title: 'a\u0000b' });
    const q = await addMessage(db, { conversationId: conv.id, role: 'user', content: 'what\u0000?' });
    const a = await addMessage(db, { conversationId: conv.id, parentId: q.id, role: 'assistant', content: '\u0000x\u0000' });
    assert.deepEqual((await getThread(db, a.id)).map((m) => m.content), ['what\uFFFD?', '\uFFFDx\uFFFD']);
    assert.equal((await db.selectFrom('conversations').select('title').where('id', '=', conv.id).executeTakeFirstOrThrow()).title, 'a\uFFFDb');
    // A filter on the same text finds what was stored.
    assert.equal((await db.selectFrom('messages').select('id').where('content', '=', '\u0000x\u0000').execute()).length, 1);
    const r = await ctx.store().writer.submit({ kind: 'thumb', messageId: a.id, value: 'up', raterId: 'u-nul', comment: 'ok\u0000' });
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal((await db.selectFrom('thumbs').select('comment').where('id', '=', r.id).executeTakeFirstOrThrow()).comment, 'ok\uFFFD');
  });

  test('refuses a message in an unknown conversation, under an unknown parent or a parent elsewhere', async () => {
    const db = ctx.store().db;
    const c1 = await createConversation(db, { userId: 'u1' });
    const c2 = await createConversation(db, { userId: 'u1' });
    const m = await addMessage(db, { conversationId: c1.id, role: 'user', content: 'hi' });
    await assert.rejects(addMessage(db, { conversationId: 'nope', role: 'user', content: 'x' }), code('unknown_conversation'));
    await assert.rejects(addMessage(db, { conversationId: c1.id, parentId: 'nope', role: 'user', content: 'x' }), code('unknown_message'));
    await assert.rejects(addMessage(db, { conversationId: c2.id, parentId: m.id, role: 'user', content: 'x' }), code('conversation_mismatch'));
    // An unknown conversation is named first, whatever the parent.
    await assert.rejects(addMessage(db, { conversationId: 'nope', parentId: m.id, role: 'user', content: 'x' }), code('unknown_conversation'));
    await assert.rejects(addMessage(db, { conversationId: 'nope', parentId: 'nope', role: 'user', content: 'x' }), code('unknown_conversation'));
    const reply = await addMessage(db, { conversationId: c1.id, parentId: m.id, role: 'assistant', content: 'hello' });
    assert.equal(reply.parent_id, m.id);
    await assert.rejects(addMessage(db, { id: m.id, conversationId: c1.id, role: 'user', content: 'x' }), code('duplicate_id'));
    await assert.rejects(addMessage(db, { conversationId: c1.id, role: 'robot' as 'user', content: 'x' }), code('invalid_input'));
    assert.equal((await listMessages(db, c2.id)).length, 0);
  });

  test('a thread stored in one go is a chain under a new conversation, the same rows as message by message; a bad turn stores nothing', async () => {
    const db = ctx.store().db;
    const turns = [
      { role: 'system' as const, content: 'Be brief.' },
      { role: 'user' as const, content: 'Define cat.' },
      { role: 'assistant' as const, content: 'A small feline.' },
      { role: 'user' as const, content: 'And dog?' },
    ];
    const { conversation, messages } = await inTransaction(db, (trx) => startThreadRows(trx, { userId: 'u-chain', keyId: 'key_1' }, turns));
    assert.equal(conversation.user_id, 'u-chain');
    assert.equal(conversation.key_id, 'key_1');
    const stored = await listMessages(db, conversation.id);
    assert.deepEqual(stored, messages);
    assert.deepEqual(stored.map((m) => [m.role, m.content, m.user_id]), turns.map((t) => [t.role, t.content, 'u-chain']));
    assert.deepEqual(stored.map((m) => m.parent_id), [null, ...stored.slice(0, -1).map((m) => m.id)]);
    assert.deepEqual((await getThread(db, stored[3]!.id)).map((m) => m.content), turns.map((t) => t.content));
    // Longer than one INSERT's worth of rows.
    const long = Array.from({ length: 1203 }, (_, i) => ({ role: (i % 2 ? 'assistant' : 'user') as 'user' | 'assistant', content: `turn ${i}` }));
    const big = await inTransaction(db, (trx) => startThreadRows(trx, { userId: 'u-chain' }, long));
    const bigStored = await listMessages(db, big.conversation.id);
    assert.equal(bigStored.length, 1203);
    assert.equal((await getThread(db, bigStored[1202]!.id)).length, 1203);
    // A bad turn (validated as addMessage validates) is refused, and the transaction leaves no conversation behind.
    const before = await db.selectFrom('conversations').select(db.fn.countAll<number>().as('n')).where('user_id', '=', 'u-bad').executeTakeFirstOrThrow();
    await assert.rejects(inTransaction(db, (trx) => startThreadRows(trx, { userId: 'u-bad' }, [{ role: 'user', content: 'ok' }, { role: 'robot' as 'user', content: 'x' }])), code('invalid_input'));
    const after = await db.selectFrom('conversations').select(db.fn.countAll<number>().as('n')).where('user_id', '=', 'u-bad').executeTakeFirstOrThrow();
    assert.equal(Number(after.n), Number(before.n));
  });

  test('records how each assistant reply was generated', async () => {
    const db = ctx.store().db;
    const conv = await createConversation(db, { userId: 'u1' });
    const q = await addMessage(db, { conversationId: conv.id, role: 'user', content: 'Capital of Egypt?' });
    const { message, generation } = await addAssistantReply(db, {
      message: { conversationId: conv.id, parentId: q.id, content: 'Cairo.', tokenCount: 2 },
      generation: {
        modelVersionId: 'sft-1',
        params: { temperature: 0.7, topK: 40 },
        seed: 4_000_000_000,
        finishReason: 'length',
        promptTokens: 12,
        completionTokens: 2,
        latencyMs: 81.5,
        ttftMs: 9.25,
      },
    });
    const stored = await getGeneration(db, message.id);
    assert.deepEqual(stored, generation);
    assert.deepEqual(JSON.parse(stored!.params_json), { temperature: 0.7, topK: 40 });
    assert.equal(stored!.seed, 4_000_000_000);
    assert.equal(stored!.latency_ms, 81.5);
    await assert.rejects(
      recordGeneration(db, { messageId: q.id, modelVersionId: 'v', finishReason: 'stop', promptTokens: 1, completionTokens: 1, latencyMs: 1 }),
      code('not_assistant_message'),
    );
    await assert.rejects(
      addAssistantReply(db, {
        message: { conversationId: conv.id, parentId: q.id, content: 'x' },
        generation: { modelVersionId: 'v', finishReason: 'exploded' as 'stop', promptTokens: 1, completionTokens: 1, latencyMs: 1 },
      }),
      code('invalid_input'),
    );
    assert.equal((await listChildren(db, q.id)).length, 1, 'the refused reply left no message behind');
  });
});
