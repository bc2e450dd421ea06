/**
 * Test fixture (run as a child process by `durability.test.ts`): opens the store at argv[2] (a
 * SQLite file, or a `postgres://` URL with the schema in argv[3]), seeds one context, prints
 * `ready`, then has 32 concurrent writers submit judgements without end, printing
 * `ack <kind> <id>` for each one the moment its promise resolves.
 */
import { openStore } from './open-store.ts';
import { seedContext } from './seed-context.ts';

const [target, schema] = process.argv.slice(2);
if (!target) throw new Error('usage: burst-writer-fixture.ts <sqlite file | postgres url> [schema]');
const store = target.startsWith('postgres') ? await openStore({ url: target, schema }) : await openStore({ url: `sqlite:${target}` });
const s = await seedContext(store.db, { n: 4 });
process.stdout.write('ready\n');

let n = 0;
async function writer(w: number): Promise<void> {
  for (;;) {
    const i = n++;
    const input =
      i % 3 === 0
        ? { kind: 'thumb', messageId: s.replies[i % 4], raterId: `r${w}-${i}`, value: 'up' }
        : i % 3 === 1
          ? { kind: 'comparison', a: s.replies[0], b: s.replies[1 + (i % 3)], choice: 'a', raterId: `r${w}-${i}` }
          : { kind: 'ranking', candidates: [s.replies[3], s.replies[1], s.replies[2]], raterId: `r${w}-${i}` };
    const r = await store.writer.submit(input);
    if (!r.ok) throw new Error(`refused: ${r.error.code}`);
    process.stdout.write(`ack ${r.kind} ${r.id}\n`);
  }
}
await Promise.all(Array.from({ length: 32 }, (_, w) => writer(w)));
