/**
 * Snapshot: `pg2kafka.setup()` on a table of 1M rows (~200 bytes each): rows/s, and the
 * longest single statement seen meanwhile by a reader (SELECT by primary key in a loop)
 * and by a writer (UPDATE by primary key in a loop), each on its own connection; and
 * whether either was seen waiting for a lock (pg_stat_activity, sampled every 5 ms):
 * setup() takes SHARE ROW EXCLUSIVE, which blocks writers for the copy but never readers.
 */
import postgres from 'postgres';
import type { BenchContext, Measure } from '../report.ts';
import { benchDatabase, createItems, sleep } from '../support.ts';

interface SnapshotRun {
  rowsPerSecond: number;
  readerMaxMs: number;
  writerMaxMs: number;
  readerLockWaits: number;
  writerLockWaits: number;
}

/** Runs `statement` in a loop until `stop()`; returns the longest one. */
function probe(url: string, rows: number, statement: 'read' | 'write') {
  const sql = postgres(url, {
    max: 1,
    onnotice: () => undefined,
    connection: { application_name: `bench ${statement}` },
  });
  const state = { running: true };
  let longest = 0;
  const loop = (async () => {
    while (state.running) {
      const id = 1 + Math.floor(Math.random() * rows);
      const started = performance.now();
      if (statement === 'read') await sql`select qty from big where id = ${id}`;
      else await sql`update big set qty = qty + 1 where id = ${id}`;
      longest = Math.max(longest, performance.now() - started);
      await sleep(2);
    }
  })();
  return {
    ready: sql`select 1`,
    async stop(): Promise<number> {
      state.running = false;
      await loop;
      await sql.end({ timeout: 2 });
      return longest;
    },
  };
}

async function snapshotOnce(rows: number): Promise<SnapshotRun> {
  const db = await benchDatabase('snapshot');
  const sql = postgres(db.url, { max: 1, onnotice: () => undefined });
  try {
    await createItems(sql, 'big', rows);
    await sql`vacuum analyze big`;
    const reader = probe(db.url, rows, 'read');
    const writer = probe(db.url, rows, 'write');
    await Promise.all([reader.ready, writer.ready]);
    await sleep(500);
    const waits = { 'bench read': 0, 'bench write': 0 };
    const sampler = postgres(db.url, { max: 1, onnotice: () => undefined });
    const sampling = { running: true };
    const sampled = (async () => {
      while (sampling.running) {
        const rows = await sampler<{ name: 'bench read' | 'bench write' }[]>`
          select application_name as name from pg_stat_activity
          where datname = current_database() and wait_event_type = 'Lock'
            and application_name in ('bench read', 'bench write')`;
        for (const row of rows) waits[row.name] += 1;
        await sleep(5);
      }
    })();
    const started = performance.now();
    await sql`select pg2kafka.setup('big', 'sku')`;
    const seconds = (performance.now() - started) / 1000;
    sampling.running = false;
    await sampled;
    await sampler.end({ timeout: 2 });
    await sleep(200);
    const [readerMaxMs, writerMaxMs] = await Promise.all([reader.stop(), writer.stop()]);
    const [row] = await sql<{ n: number }[]>`
      select count(*)::int as n from pg2kafka.captured_changes where statement = 'SNAPSHOT'`;
    if (row?.n !== rows) throw new Error(`snapshot: ${row?.n} SNAPSHOT events for ${rows} rows`);
    return {
      rowsPerSecond: rows / seconds,
      readerMaxMs,
      writerMaxMs,
      readerLockWaits: waits['bench read'],
      writerLockWaits: waits['bench write'],
    };
  } finally {
    await sql.end({ timeout: 2 });
    await db.drop();
  }
}

export async function snapshot(ctx: BenchContext): Promise<Measure[]> {
  const rounds = ctx.quick ? 1 : 2;
  const rows = ctx.quick ? 200_000 : 1_000_000;
  const runs: SnapshotRun[] = [];
  for (let round = 0; round < rounds; round += 1) {
    const run = await snapshotOnce(rows);
    runs.push(run);
    ctx.log(
      `snapshot of ${rows} rows, round ${round + 1}/${rounds}: ${Math.round(run.rowsPerSecond)} rows/s, longest read ${run.readerMaxMs.toFixed(1)} ms (${run.readerLockWaits} lock-wait samples), longest write ${run.writerMaxMs.toFixed(0)} ms (${run.writerLockWaits} lock-wait samples)`,
    );
  }
  const label = `setup() on ${rows / 1000}k rows`;
  return [
    {
      case: 'snapshot',
      measure: `${label}: rate`,
      unit: 'rows/s',
      samples: runs.map((r) => r.rowsPerSecond),
      target: { op: '>=', value: 100_000 },
    },
    {
      case: 'snapshot',
      measure: `${label}: reader seen waiting for a lock`,
      unit: 'samples',
      samples: runs.map((r) => r.readerLockWaits),
      target: { op: '<=', value: 0 },
    },
    {
      case: 'snapshot',
      measure: `${label}: longest read`,
      unit: 'ms',
      samples: runs.map((r) => r.readerMaxMs),
    },
    {
      case: 'snapshot',
      measure: `${label}: writer seen waiting for a lock`,
      unit: 'samples',
      samples: runs.map((r) => r.writerLockWaits),
      note: 'writers wait for the copy',
    },
    {
      case: 'snapshot',
      measure: `${label}: longest write`,
      unit: 'ms',
      samples: runs.map((r) => r.writerMaxMs),
    },
  ];
}
