/**
 * Writer overhead of the capture trigger: single-row INSERT and UPDATE throughput on a
 * 100k-row table with the trigger vs an identical table without it, measured with pgbench
 * in one run, alternating the two sides round by round (this machine is shared and noisy,
 * so each side gets the same conditions on average). Reports medians and the spread of
 * the per-round ratios.
 *
 *   npm run bench:writers [-- --quick] [-- --rounds N --seconds S]
 *
 * Needs pgbench on the PATH and DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
 * as an admin connection: it creates and drops its own database.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import postgres from 'postgres';
import { benchDatabase } from './support.ts';

interface Case {
  name: string;
  op: 'insert' | 'update';
  clients: number;
  synchronousCommit: 'on' | 'off';
  target?: number;
}

const CASES: Case[] = [
  {
    name: 'INSERT, 16 writers, sync commit on',
    op: 'insert',
    clients: 16,
    synchronousCommit: 'on',
    target: 0.8,
  },
  {
    name: 'UPDATE, 16 writers, sync commit on',
    op: 'update',
    clients: 16,
    synchronousCommit: 'on',
    target: 0.7,
  },
  {
    name: 'INSERT, 2 writers, sync commit off',
    op: 'insert',
    clients: 2,
    synchronousCommit: 'off',
  },
  {
    name: 'UPDATE, 2 writers, sync commit off',
    op: 'update',
    clients: 2,
    synchronousCommit: 'off',
  },
];

const ROWS = 100_000;
const SIDES = ['plain', 'tracked', 'tracked_nowake'] as const;
type Side = (typeof SIDES)[number];

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const value = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isFinite(value) || value <= 0) throw new Error(`--${name} needs a positive number`);
  return value;
}

const quick = process.argv.includes('--quick');
const rounds = arg('rounds', quick ? 2 : 5);
const seconds = arg('seconds', quick ? 4 : 10);

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[mid] ?? 0) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

function pgbench(url: string, script: string, c: Case): number {
  const result = spawnSync(
    'pgbench',
    [
      '-n',
      '-c',
      String(c.clients),
      '-j',
      String(Math.min(c.clients, 2)),
      '-T',
      String(seconds),
      '-f',
      script,
      url,
    ],
    {
      encoding: 'utf8',
      env: { ...process.env, PGOPTIONS: `-c synchronous_commit=${c.synchronousCommit}` },
    },
  );
  const tps = /tps = ([\d.]+)/.exec(result.stdout)?.[1];
  if (result.status !== 0 || tps === undefined) {
    throw new Error(
      `pgbench failed (exit ${String(result.status)}):\n${result.stdout}${result.stderr}`,
    );
  }
  return Number(tps);
}

async function main(): Promise<void> {
  const db = await benchDatabase('writers');
  const { url } = db;
  const work = mkdtempSync(join(tmpdir(), 'pg2kafka-bench-'));
  const sql = postgres(url, { max: 1, onnotice: () => undefined });
  try {
    for (const table of SIDES) {
      await sql.unsafe(`
        create table ${table} (
          id bigserial primary key, sku text not null unique, name text not null,
          description text, price numeric(12, 2), qty int not null, updated_at timestamptz not null default now());
        insert into ${table} (sku, name, description, price, qty)
        select 'SKU-' || g, 'Product ' || g, repeat('lorem ipsum ', 8), g % 1000 + 0.99, g % 50
        from generate_series(1, ${ROWS}) g;`);
      await sql.unsafe(`vacuum analyze ${table}`);
    }
    await sql`select pg2kafka.setup('tracked', 'sku')`;
    // The same capture without the statement trigger that wakes an idle relay: its cost.
    await sql`select pg2kafka.setup('tracked_nowake', 'sku')`;
    await sql`drop trigger pg2kafka_wake on tracked_nowake`;

    const scripts: Record<string, string> = {};
    for (const table of SIDES) {
      scripts[`insert-${table}`] = join(work, `insert-${table}.sql`);
      writeFileSync(
        scripts[`insert-${table}`] ?? '',
        `insert into ${table} (sku, name, description, price, qty) values ('N-' || :client_id || '-' || random(), 'Big Red Coffee Mug', 'A mug', 9.99, 3);\n`,
      );
      scripts[`update-${table}`] = join(work, `update-${table}.sql`);
      writeFileSync(
        scripts[`update-${table}`] ?? '',
        `\\set id random(1, ${ROWS})\nupdate ${table} set qty = qty + 1 where id = :id;\n`,
      );
    }

    process.stderr.write(`writer overhead: ${rounds} rounds x ${seconds} s per side and case\n`);
    const report = [];
    for (const c of CASES) {
      const tps: Record<Side, number[]> = { plain: [], tracked: [], tracked_nowake: [] };
      for (let round = 0; round < rounds; round += 1) {
        // Rotate which side goes first, so none always runs on a warmer cache.
        const order = SIDES.map((_, i) => SIDES[(i + round) % SIDES.length] ?? 'plain');
        for (const side of order) {
          await sql`delete from pg2kafka.captured_changes`;
          await sql`checkpoint`;
          tps[side].push(pgbench(url, scripts[`${c.op}-${side}`] ?? '', c));
        }
        process.stderr.write(
          `  ${c.name} round ${round + 1}: ${SIDES.map((side) => `${side} ${tps[side].at(-1)?.toFixed(0)}`).join(', ')} tps\n`,
        );
      }
      const ratios = tps.plain.map((p, i) => (tps.tracked[i] ?? 0) / p);
      report.push({
        case: c.name,
        plainTps: Math.round(median(tps.plain)),
        trackedTps: Math.round(median(tps.tracked)),
        ratio: Number((median(tps.tracked) / median(tps.plain)).toFixed(2)),
        ratioSpread: [
          Number(Math.min(...ratios).toFixed(2)),
          Number(Math.max(...ratios).toFixed(2)),
        ],
        ratioWithoutWakeTrigger: Number(
          (median(tps.tracked_nowake) / median(tps.plain)).toFixed(2),
        ),
        target: c.target ?? null,
      });
    }
    console.table(report);
  } finally {
    await sql.end({ timeout: 5 });
    await db.drop();
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(
    `${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
