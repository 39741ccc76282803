/**
 * The relay end to end: real PostgreSQL, the relay as a child process, a real broker,
 * and results read back with a real consumer.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { migrated } from '../capture/support.ts';
import { useKafka, useTestDatabase, waitFor } from '../helpers.ts';
import { RelayProcess } from './support.ts';

const db = useTestDatabase();
const kafka = useKafka();
const running: RelayProcess[] = [];

function relay(env: Record<string, string> = {}): RelayProcess {
  const r = new RelayProcess({
    DATABASE_URL: db.url,
    KAFKA_BROKERS: kafka.brokers.join(','),
    ...env,
  });
  running.push(r);
  return r;
}

before(async () => {
  await migrated(db);
});

after(async () => {
  await Promise.all(running.map((r) => r.kill()));
});

async function queueDepth(): Promise<number> {
  const [row] = await db.sql<
    { n: number }[]
  >`select count(*)::int as n from pg2kafka.captured_changes`;
  return row?.n ?? -1;
}

test('the walk-through arrives on pg2kafka.<db>.products with exact keys, values, headers and timestamps', async () => {
  await db.sql`create table products (id serial, sku text primary key, name text not null)`;
  await db.sql`insert into products (sku, name) values ('CM01-B', 'Blue Coffee Mug'), ('CM01-R', 'Red Coffee Mug')`;
  await db.sql`select pg2kafka.setup('products', 'sku')`;
  await db.sql`update products set name = 'Big Red Coffee Mug' where sku = 'CM01-R'`;
  await db.sql`delete from products where sku = 'CM01-B'`;
  const expected = await db.sql<{ uuid: string; created_at_ms: string; created_at: string }[]>`
    select uuid::text, floor(extract(epoch from created_at) * 1000)::int8::text as created_at_ms,
           to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as created_at
    from pg2kafka.outbound_event_queue order by id, part`;

  const r = relay();
  const topic = `pg2kafka.${db.name}.products`;
  const messages = await kafka.consume(topic, 4, 30_000, 1000);
  await waitFor('an empty queue', async () => (await queueDepth()) === 0);
  assert.equal((await r.stop()).code, 0);

  assert.deepEqual(
    messages.map((m) => [m.key, JSON.parse(m.value ?? '') as unknown]),
    [
      [
        'CM01-B',
        {
          uuid: expected[0]?.uuid,
          external_id: 'CM01-B',
          statement: 'SNAPSHOT',
          data: { id: 1, sku: 'CM01-B', name: 'Blue Coffee Mug' },
          created_at: expected[0]?.created_at,
        },
      ],
      [
        'CM01-R',
        {
          uuid: expected[1]?.uuid,
          external_id: 'CM01-R',
          statement: 'SNAPSHOT',
          data: { id: 2, sku: 'CM01-R', name: 'Red Coffee Mug' },
          created_at: expected[1]?.created_at,
        },
      ],
      [
        'CM01-R',
        {
          uuid: expected[2]?.uuid,
          external_id: 'CM01-R',
          statement: 'UPDATE',
          data: { name: 'Big Red Coffee Mug' },
          created_at: expected[2]?.created_at,
        },
      ],
      [
        'CM01-B',
        {
          uuid: expected[3]?.uuid,
          external_id: 'CM01-B',
          statement: 'DELETE',
          data: {},
          created_at: expected[3]?.created_at,
        },
      ],
    ],
  );
  assert.match(expected[0]?.created_at ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
  assert.deepEqual(
    messages.map((m) => m.timestamp),
    expected.map((e) => e.created_at_ms),
  );
  assert.deepEqual(messages[2]?.headers, {
    uuid: expected[2]?.uuid,
    statement: 'UPDATE',
    table: 'public.products',
    database: db.name,
  });
  // The value keeps the original's field order.
  assert.match(
    messages[3]?.value ?? '',
    /^\{"uuid" : ".*", "external_id" : "CM01-B", "statement" : "DELETE", "data" : \{\}, "created_at" : ".*"\}$/,
  );
});
