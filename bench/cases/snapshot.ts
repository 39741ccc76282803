/**
 * Snapshot: the existing rows of a table of 1M rows (~200 bytes each; --quick: 100k)
 * become SNAPSHOT events, two ways, alternated round by round in one run:
 *   - locked: `pg2kafka.setup('big', 'sku', snapshot => 'locked')` copies every row in
 *     setup's own transaction under SHARE ROW EXCLUSIVE: writers wait for the whole copy;
 *   - online: `pg2kafka.setup('big', 'sku')` registers the copy, then
 *     `pg2kafka.snapshot_chunk()` is called back to back, one autocommitted chunk of
 *     5,000 keys at a time, until done (what `pg2kafka snapshot` does: no throttling).
 * Meanwhile 8 writers (UPDATE of a random key) and 2 readers (SELECT of a random key), each
 * on its own connection, loop with a 2 ms sleep, and pg_stat_activity is sampled every 5 ms
 * for either seen waiting for a lock. Reported: rows/s (rows / time from setup's start to
 * the last chunk's end), the writers' longest UPDATE and their p99, the readers' longest
 * SELECT (statements that overlapped the copy), the lock-wait samples, and for online the
 * longest chunk. After each run the queue must hold exactly one SNAPSHOT event per row.
 */
import postgres from 'postgres';
import { copyChunk } from '../../src/relay/snapshots.ts';
import type { BenchContext, Measure } from '../report.ts';
import { benchDatabase, createItems, percentile, rotated, sleep } from '../support.ts';

const SIDES = ['locked', 'online'] as const;
type Side = (typeof SIDES)[number];
const WRITERS = 8;
const READERS = 2;
const READ = 'bench read';
const WRITE = 'bench write';

interface SnapshotRun {
  seconds: number;
  rowsPerSecond: number;
  chunks: number;
  chunkMaxMs: number;
  readerMaxMs: number;
  writerMaxMs: number;
  writerP99Ms: number;
  /** UPDATEs that overlapped the copy, all writers together. */
  writes: number;
  readerLockWaits: number;
  writerLockWaits: number;
}

/** [start, duration] of one statement, in performance.now() milliseconds. */
type Timed = [number, number];

/** Runs `statement` in a loop until `stop()`; returns every statement's start and duration. */
function probe(url: string, rows: number, statement: 'read' | 'write') {
  const sql = postgres(url, {
    max: 1,
    onnotice: () => undefined,
    connection: { application_name: statement === 'read' ? READ : WRITE },
  });
  const state = { running: true };
  const timed: Timed[] = [];
  const loop = (async () => {
    while (state.running) {
      const id = 1 + Math.floor(Math.random() * rows);
      const started = performance.now();
      if (statement === 'read') await sql`select qty from big where id = ${id}`;
      else await sql`update big set qty = qty + 1 where id = ${id}`;
      timed.push([started, performance.now() - started]);
      await sleep(2);
    }
  })();
  return {
    ready: sql`select 1`,
    async stop(): Promise<Timed[]> {
      state.running = false;
      await loop;
      await sql.end({ timeout: 2 });
      return timed;
    },
  };
}

/** Durations of the statements that ran at some point in [from, to], ascending. */
function during(timed: Timed[], from: number, to: number): number[] {
  return timed
    .filter(([start, ms]) => start <= to && start + ms >= from)
    .map(([, ms]) => ms)
    .sort((a, b) => a - b);
}

async function snapshotOnce(side: Side, rows: number): Promise<SnapshotRun> {
  const db = await benchDatabase('snapshot');
  const sql = postgres(db.url, { max: 1, onnotice: () => undefined });
  try {
    await createItems(sql, 'big', rows);
    await sql`vacuum analyze big`;
    const [table] = await sql<{ oid: string }[]>`select 'big'::regclass::oid::text as oid`;
    const oid = table?.oid ?? '';
    const readers = Array.from({ length: READERS }, () => probe(db.url, rows, 'read'));
    const writers = Array.from({ length: WRITERS }, () => probe(db.url, rows, 'write'));
    await Promise.all([...readers, ...writers].map((p) => p.ready));
    await sleep(500);
    const waits = { [READ]: 0, [WRITE]: 0 };
    const sampler = postgres(db.url, { max: 1, onnotice: () => undefined });
    const sampling = { running: true };
    const sampled = (async () => {
      while (sampling.running) {
        const waiting = await sampler<{ name: typeof READ | typeof WRITE }[]>`
          select application_name as name from pg_stat_activity
          where datname = current_database() and wait_event_type = 'Lock'
            and application_name in (${READ}, ${WRITE})`;
        for (const row of waiting) waits[row.name] += 1;
        await sleep(5);
      }
    })();

    const started = performance.now();
    let chunks = 0;
    let chunkMaxMs = 0;
    if (side === 'locked') {
      await sql`select pg2kafka.setup('big', 'sku', snapshot => 'locked')`;
    } else {
      await sql`select pg2kafka.setup('big', 'sku')`;
      for (let done = false; !done;) {
        const chunkStarted = performance.now();
        ({ done } = await copyChunk(sql, oid));
        chunks += 1;
        chunkMaxMs = Math.max(chunkMaxMs, performance.now() - chunkStarted);
      }
    }
    const ended = performance.now();
    sampling.running = false;
    await sampled;
    await sampler.end({ timeout: 2 });
    await sleep(200);
    const [read, written] = await Promise.all([
      Promise.all(readers.map((p) => p.stop())),
      Promise.all(writers.map((p) => p.stop())),
    ]);
    const reads = during(read.flat(), started, ended);
    const writes = during(written.flat(), started, ended);

    const [check] = await sql<{ events: number; keys: number }[]>`
      select count(*)::int as events, count(distinct new_row->>'id')::int as keys
      from pg2kafka.captured_changes
      where statement = 'SNAPSHOT' and table_oid = ${oid}::oid`;
    if (check?.events !== rows || check.keys !== rows) {
      throw new Error(
        `snapshot (${side}): ${String(check?.events)} SNAPSHOT events for ${String(check?.keys)} distinct keys, expected exactly one for each of the ${rows} rows`,
      );
    }
    const seconds = (ended - started) / 1000;
    return {
      seconds,
      rowsPerSecond: rows / seconds,
      chunks,
      chunkMaxMs,
      readerMaxMs: reads.at(-1) ?? 0,
      writerMaxMs: writes.at(-1) ?? 0,
      writerP99Ms: percentile(writes, 99),
      writes: writes.length,
      readerLockWaits: waits[READ],
      writerLockWaits: waits[WRITE],
    };
  } finally {
    await sql.end({ timeout: 2 });
    await db.drop();
  }
}

export async function snapshot(ctx: BenchContext): Promise<Measure[]> {
  const rounds = ctx.quick ? 1 : 3;
  const rows = ctx.quick ? 100_000 : 1_000_000;
  const runs = new Map<Side, SnapshotRun[]>(SIDES.map((s) => [s, []]));
  for (let round = 0; round < rounds; round += 1) {
    for (const side of rotated(SIDES, round)) {
      const run = await snapshotOnce(side, rows);
      runs.get(side)?.push(run);
      ctx.log(
        `snapshot of ${rows} rows, ${side}, round ${round + 1}/${rounds}: ${Math.round(run.rowsPerSecond)} rows/s (${run.seconds.toFixed(1)} s${side === 'online' ? `, ${run.chunks} chunks, longest ${run.chunkMaxMs.toFixed(0)} ms` : ''}); ${WRITERS} writers: ${run.writes} updates, longest ${run.writerMaxMs.toFixed(0)} ms, p99 ${run.writerP99Ms.toFixed(1)} ms, ${run.writerLockWaits} lock-wait samples; ${READERS} readers: longest ${run.readerMaxMs.toFixed(1)} ms, ${run.readerLockWaits} lock-wait samples`,
      );
    }
  }
  const rowsLabel = `${rows / 1000}k rows`;
  const label: Record<Side, string> = {
    locked: `setup(snapshot => 'locked') on ${rowsLabel}`,
    online: `setup() + snapshot_chunk() back to back on ${rowsLabel}`,
  };
  return SIDES.flatMap((side): Measure[] => {
    const list = runs.get(side) ?? [];
    const online = side === 'online';
    const measures: Measure[] = [
      {
        case: 'snapshot',
        measure: `${label[side]}: rate`,
        unit: 'rows/s',
        samples: list.map((r) => r.rowsPerSecond),
        ...(online
          ? { target: { op: '>=', value: 100_000 } }
          : { note: 'one transaction, under the table lock' }),
      },
      {
        case: 'snapshot',
        measure: `${label[side]}: ${WRITERS} writers' longest UPDATE`,
        unit: 'ms',
        samples: list.map((r) => r.writerMaxMs),
        ...(online
          ? { target: { op: '<=', value: 100 } }
          : { note: 'writers wait for the whole copy' }),
      },
      {
        case: 'snapshot',
        measure: `${label[side]}: ${WRITERS} writers' UPDATE p99`,
        unit: 'ms',
        samples: list.map((r) => r.writerP99Ms),
      },
      {
        case: 'snapshot',
        measure: `${label[side]}: writer seen waiting for a lock`,
        unit: 'samples',
        samples: list.map((r) => r.writerLockWaits),
        note: online ? 'row locks of the chunk in flight' : 'the table lock',
      },
      {
        case: 'snapshot',
        measure: `${label[side]}: ${READERS} readers' longest SELECT`,
        unit: 'ms',
        samples: list.map((r) => r.readerMaxMs),
      },
      {
        case: 'snapshot',
        measure: `${label[side]}: reader seen waiting for a lock`,
        unit: 'samples',
        samples: list.map((r) => r.readerLockWaits),
        target: { op: '<=', value: 0 },
      },
    ];
    if (online) {
      measures.push({
        case: 'snapshot',
        measure: `${label[side]}: longest chunk`,
        unit: 'ms',
        samples: list.map((r) => r.chunkMaxMs),
      });
    }
    return measures;
  });
}
