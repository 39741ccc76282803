/**
 * Row-level security never filters a snapshot silently. pg2kafka runs as the role that
 * owns schema pg2kafka (here a dedicated, non-superuser role, as the README advises);
 * when a policy would hide rows of a captured table from that role, setup fails and says
 * what to grant, for a table copied in setup's transaction and for one copied online.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { migrate } from '../../src/capture/migrate.ts';
import { uniqueName, useTestDatabase } from '../helpers.ts';

const db = useTestDatabase();
/** Roles belong to the whole server: this file's own, dropped after it. */
const role = uniqueName('pg2kafka_rls');

function asRole(url: string): string {
  const parsed = new URL(url);
  parsed.username = role;
  return parsed.toString();
}

before(async () => {
  await db.ready;
  await db.sql.unsafe(`create role "${role}" login`);
  await db.sql.unsafe(`grant create on database "${db.name}" to "${role}"`);
  await migrate({ databaseUrl: asRole(db.url) });
});

after(async () => {
  await db.sql.unsafe(`drop owned by "${role}" cascade`).catch(() => undefined);
});

/** A table whose policy shows each row only to the role named in it; none is pg2kafka's. */
async function createSecrets(table: string, rows: number): Promise<void> {
  await db.sql.unsafe(`create table ${table} (id int primary key, visible_to text not null)`);
  await db.sql.unsafe(`insert into ${table} select g, 'app' from generate_series(1, ${rows}) g`);
  await db.sql.unsafe(`alter table ${table} enable row level security`);
  await db.sql.unsafe(`create policy own_rows on ${table} using (visible_to = current_user)`);
  await db.sql.unsafe(`grant select, trigger, update on ${table} to "${role}"`);
}

test('a policy hiding rows from the pg2kafka role makes setup fail, not copy fewer rows', async () => {
  await createSecrets('secrets_small', 10);
  await createSecrets('secrets_big', 6_000);
  const sql = db.connect({ max: 1, user: role });
  try {
    for (const table of ['secrets_small', 'secrets_big']) {
      await assert.rejects(sql.unsafe(`select pg2kafka.setup('${table}', 'id')`), (error) => {
        const e = error as { code?: string; message?: string; hint?: string };
        assert.equal(e.code, '42501', e.message);
        assert.match(e.message ?? '', new RegExp(`row-level security policy for table "${table}"`));
        assert.match(e.hint ?? '', new RegExp(`ALTER ROLE ${role} BYPASSRLS`));
        return true;
      });
      const [tracked] = await db.sql<{ n: number }[]>`
        select count(*)::int as n from pg2kafka.tracked_tables where table_oid = ${table}::regclass`;
      assert.equal(tracked?.n, 0, `${table} is not set up`);
    }
    await db.sql.unsafe(`alter role "${role}" bypassrls`);
    await sql`select pg2kafka.setup('secrets_small', 'id')`;
    await sql`select pg2kafka.setup('secrets_big', 'id')`;
    await sql`call pg2kafka.run_snapshots()`;
    const counts = await db.sql<{ table: string; n: number }[]>`
      select table_oid::regclass::text as table, count(*)::int as n
      from pg2kafka.captured_changes where statement = 'SNAPSHOT' group by 1 order by 1`;
    assert.deepEqual(
      counts.map((c) => [c.table, c.n]),
      [
        ['secrets_big', 6_000],
        ['secrets_small', 10],
      ],
    );
  } finally {
    await sql.end();
  }
});
