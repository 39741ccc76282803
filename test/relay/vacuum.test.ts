/**
 * vacuumHolder(): names the session whose snapshot or transaction id is the oldest in
 * this database (what keeps the queue's deleted rows from being vacuumed), never the
 * caller's own, and nothing once they have ended. VacuumWatch warns about it, also when
 * the relay's role may not see when another role's transaction began.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createLogger } from '../../src/logger.ts';
import { VacuumWatch } from '../../src/relay/vacuum-watch.ts';
import { vacuumHolder } from '../../src/relay/vacuum.ts';
import { uniqueName, useTestDatabase, waitFor } from '../helpers.ts';

const db = useTestDatabase();

test('the oldest snapshot or transaction id of the database is named, then the next, then none', async () => {
  await db.ready;
  await db.sql`create table vacuum_t (id int primary key)`;
  assert.equal(await vacuumHolder(db.sql), undefined, 'nothing holds vacuum back at first');

  // A report: REPEATABLE READ, one query, then idle in its transaction (a snapshot, no xid).
  const reports = db.connect({ max: 1, connection: { application_name: 'nightly report' } });
  const report = await reports.reserve();
  // A writer that started later: a transaction id, idle in transaction after its insert.
  const writers = db.connect({ max: 1, connection: { application_name: 'batch job' } });
  const writer = await writers.reserve();
  try {
    await report`begin isolation level repeatable read`;
    await report`select count(*) from vacuum_t`;
    const [reportPid] = await report<{ pid: number }[]>`select pg_backend_pid() as pid`;
    // Transactions in between, so that the report's xmin is clearly the older.
    for (let i = 0; i < 3; i += 1) await db.sql`select pg_current_xact_id()`;
    await writer`begin`;
    await writer`insert into vacuum_t values (1)`;
    const [writerPid] = await writer<{ pid: number }[]>`select pg_backend_pid() as pid`;

    const first = await vacuumHolder(db.sql);
    assert.deepEqual(
      first && {
        pid: first.pid,
        state: first.state,
        applicationName: first.applicationName,
        backendType: first.backendType,
        query: first.query,
      },
      {
        pid: reportPid?.pid,
        state: 'idle in transaction',
        applicationName: 'nightly report',
        backendType: 'client backend',
        query: 'select pg_backend_pid() as pid',
      },
    );
    assert.ok((first?.xidAge ?? -1) >= 4, `xid age ${first?.xidAge}`);
    assert.ok((first?.transactionSeconds ?? -1) >= 0, 'seconds since the transaction began');
    assert.ok(first?.transactionStart instanceof Date && first.queryStart instanceof Date);

    // The caller's own snapshot does not count, however old.
    const own = await db.sql.begin('isolation level repeatable read', async (tx) => {
      await tx`select 1`;
      const [me] = await tx<{ pid: number }[]>`select pg_backend_pid() as pid`;
      const holder = await vacuumHolder(tx);
      return { me: me?.pid, holder: holder?.pid };
    });
    assert.notEqual(own.holder, own.me);
    assert.equal(own.holder, reportPid?.pid);

    await report`commit`;
    const second = await vacuumHolder(db.sql);
    assert.equal(second?.pid, writerPid?.pid, 'then the writer, by its transaction id');
    assert.equal(second?.applicationName, 'batch job');
    await writer`commit`;
    assert.equal(await vacuumHolder(db.sql), undefined, 'nothing once both ended');
  } finally {
    report.release();
    writer.release();
    await reports.end();
    await writers.end();
  }
});

test('a role without pg_read_all_stats is still warned, with how long the relay has seen it', async () => {
  await db.ready;
  // Roles belong to the whole server: this one is dropped at the end.
  const watcher = uniqueName('vacuum_watcher');
  await db.sql.unsafe(`create role "${watcher}" login`);
  const watcherSql = db.connect({ max: 1, user: watcher });
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger('info', {
    write: (line: string) => {
      lines.push(JSON.parse(line) as Record<string, unknown>);
    },
  });
  const watch = new VacuumWatch(watcherSql, logger, { checkMs: 200, warnAfterMs: 1_000 });
  watch.setActive(true);
  watch.start();
  // A superuser's report: the watcher sees its pid, application and xmin, not its start.
  const reports = db.connect({ max: 1, connection: { application_name: 'nightly report' } });
  try {
    await reports.begin('isolation level repeatable read', async (tx) => {
      const [me] = await tx<{ pid: number }[]>`select pg_backend_pid() as pid`;
      const seen = await vacuumHolder(watcherSql);
      assert.equal(seen?.pid, me?.pid);
      assert.equal(seen?.transactionSeconds, undefined, 'its start is hidden from the watcher');
      const warning = await waitFor(
        'the vacuum warning',
        () => lines.find((l) => String(l.msg).includes('holds vacuum back')),
        10_000,
      );
      assert.equal(warning.level, 40);
      assert.equal(warning.pid, me?.pid);
      assert.match(String(warning.msg), /open for at least 1 s/);
      assert.match(String(warning.msg), /application "nightly report"/);
      assert.match(String(warning.msg), /pg_read_all_stats/);
    });
  } finally {
    watch.stop();
    await reports.end();
    await watcherSql.end();
    await db.sql.unsafe(`drop role "${watcher}"`);
  }
});
