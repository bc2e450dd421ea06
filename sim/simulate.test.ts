import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../server/test-support.ts';
import { GoldRubric } from './gold-rubric.ts';
import { compareServers, parseSimArgs } from './simulate.ts';

const PROMPTS = [
  { prompt: 'What does lucid mean?', word: 'lucid', gloss: 'clear and easy to understand' },
  { prompt: 'What does the cat mean?', word: 'cat', gloss: 'sat on the mat' },
  { prompt: 'What does the dog mean?', word: 'dog', gloss: 'sat on the log' },
];

test('options: defaults, values and refusals', () => {
  const d = parseSimArgs([]);
  assert.notEqual(d, 'help');
  if (d === 'help') return;
  assert.equal(d.rounds, 4);
  assert.equal(d.klCoef, 0.05);
  assert.equal(d.exploitable, false);
  const o = parseSimArgs(['--json', '--rounds', '2', '--users', '3', '--judgements-per-round', '40', '--minutes', '1.5', '--seed', '9', '--kl-coef', '0', '--exploitable']);
  if (o === 'help') return;
  assert.deepEqual([o.json, o.rounds, o.users, o.judgementsPerRound, o.minutes, o.seed, o.klCoef, o.exploitable], [true, 2, 3, 40, 1.5, 9, 0, true]);
  assert.equal(parseSimArgs(['--help']), 'help');
  assert.throws(() => parseSimArgs(['--rounds', 'x']), /--rounds/);
  assert.throws(() => parseSimArgs(['--bogus']));
});

describeServers();

function describeServers(): void {
  let a: TestServer, b: TestServer, c: TestServer;
  before(async () => {
    [a, b, c] = await Promise.all([
      startTestServer({}, { modelConfig: { blockSize: 128 } }),
      startTestServer({}, { modelConfig: { blockSize: 128 } }),
      startTestServer({}, { modelConfig: { blockSize: 128, nEmbd: 32 } }),
    ]);
  });
  after(async () => Promise.all([a.close(), b.close(), c.close()]));

  test('the same model on two servers, same seeds: identical replies, a win rate of one half', async () => {
    const r = await compareServers(a.wsUrl, b.wsUrl, PROMPTS, new GoldRubric(PROMPTS), { temperature: 0.8, maxTokens: 12 });
    assert.equal(r.winRate, 0.5);
    assert.equal(r.goldA, r.goldB);
    assert.deepEqual(r.partsA, r.partsB);
    assert.ok(r.partsA.words > 0 && r.partsA.clean >= 0 && r.partsA.clean <= 0.5 && r.partsA.length <= 0, JSON.stringify(r.partsA));
  });

  test('different models: swapping the sides swaps the win rate and the gold means (seeded replies)', async () => {
    const rubric = new (class extends GoldRubric {
      override score(_p: string, reply: string): number {
        return reply.length;
      }
    })(PROMPTS);
    const ab = await compareServers(a.wsUrl, c.wsUrl, PROMPTS, rubric, { temperature: 0.8, maxTokens: 12 });
    const ba = await compareServers(c.wsUrl, a.wsUrl, PROMPTS, rubric, { temperature: 0.8, maxTokens: 12 });
    assert.equal(ab.winRate + ba.winRate, 1);
    assert.ok(Math.abs(ab.goldA - ba.goldB) < 1e-9);
  });
}
