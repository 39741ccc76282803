/**
 * What every benchmark case needs: a database of its own (created through the admin
 * DATABASE_URL, migrated, dropped afterwards), a relay child process to watch from
 * /proc, and the arithmetic of medians and percentiles.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Kafka, logLevel } from 'kafkajs';
import postgres from 'postgres';
import { DEFAULT_ADMIN_DATABASE_URL } from '../scripts/infrastructure.ts';
import { splitLines } from '../scripts/kafka-broker.ts';
import { migrate } from '../src/capture/migrate.ts';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const ADMIN_URL = process.env.DATABASE_URL ?? DEFAULT_ADMIN_DATABASE_URL;

export interface BenchDatabase {
  name: string;
  url: string;
  drop(): Promise<void>;
}

let databases = 0;

/** Creates and migrates `pg2kafka_bench_<kind>_<pid>_<n>`. */
export async function benchDatabase(kind: string): Promise<BenchDatabase> {
  databases += 1;
  const name = `pg2kafka_bench_${kind}_${process.pid}_${databases}`;
  const url = Object.assign(new URL(ADMIN_URL), { pathname: `/${name}` }).toString();
  const admin = postgres(ADMIN_URL, { max: 1, onnotice: () => undefined });
  await admin.unsafe(`create database "${name}"`);
  await migrate({ databaseUrl: url });
  return {
    name,
    url,
    async drop() {
      await admin.unsafe(`drop database if exists "${name}" with (force)`);
      await admin.end({ timeout: 2 });
    },
  };
}

/**
 * A table shaped like a product catalogue, ~200 bytes of row JSON per row, with `rows`
 * rows (queued as INSERT events when the table is already set up).
 */
export async function createItems(sql: postgres.Sql, table: string, rows: number): Promise<void> {
  await sql.unsafe(`
    create table ${table} (
      id bigserial primary key, sku text not null unique, name text not null,
      description text, price numeric(12, 2), qty int not null, updated_at timestamptz not null default now())`);
  await fillItems(sql, table, 1, rows);
}

/** Inserts rows `from`..`to` in statements of 100k rows. */
export async function fillItems(
  sql: postgres.Sql,
  table: string,
  from: number,
  to: number,
): Promise<void> {
  for (let start = from; start <= to; start += 100_000) {
    await sql.unsafe(`
      insert into ${table} (sku, name, description, price, qty)
      select 'SKU-' || g, 'Product ' || g, repeat('lorem ipsum ', 8), g % 1000 + 0.99, g % 50
      from generate_series(${start}, ${Math.min(to, start + 99_999)}) g`);
  }
}

export async function queued(sql: postgres.Sql): Promise<number> {
  const [row] = await sql<
    { n: number }[]
  >`select count(*)::int as n from pg2kafka.captured_changes`;
  return row?.n ?? 0;
}

const TICKS_PER_SECOND = 100;

/** Resident memory and CPU seconds (user + system) of a process, from /proc. */
export function procStats(pid: number): { rssMb: number; cpuSeconds: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  const ticks = Number(stat[11] ?? 0) + Number(stat[12] ?? 0);
  return { rssMb: rssKb / 1024, cpuSeconds: ticks / TICKS_PER_SECOND };
}

/** Busy and total CPU time of the whole machine so far (all cores, in ticks), from /proc/stat. */
export function machineCpu(): { busy: number; total: number } {
  const fields = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '')
    .trim()
    .split(/\s+/)
    .slice(1)
    .map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
  return { busy: total - idle, total };
}

/** rdkafka-eos: librdkafka with DELIVERY=exactly-once (one Kafka transaction per batch). */
export type Sink = 'kafkajs' | 'rdkafka' | 'rdkafka-eos' | 'discard';

export interface RelayProcess {
  child: ChildProcess;
  pid: number;
  /** Resolves when the relay logged that it holds the lease and ships. */
  active: Promise<void>;
  stop(): Promise<void>;
}

/**
 * Starts a relay in a child process: the real CLI (`dist/src/cli.js relay`) with librdkafka
 * (the default), kafkajs, or librdkafka with exactly-once delivery, or the same relay with
 * the Kafka send replaced by nothing (`discard`, dist/bench/relay-child.js).
 * Logs at info level are read for the "active" line; warnings and errors are passed on.
 */
export function spawnRelay(options: {
  databaseUrl: string;
  brokers: string;
  sink?: Sink;
  env?: Record<string, string>;
  /** Do not pass on warnings (a case that stops the broker expects them). */
  quiet?: boolean;
  /** Called with every log line (a case that reads the relay's own figures). */
  onLog?: (entry: Record<string, unknown>) => void;
}): RelayProcess {
  const sink = options.sink ?? 'rdkafka';
  const entry = sink === 'discard' ? ['dist/bench/relay-child.js'] : ['dist/src/cli.js', 'relay'];
  const child = spawn(process.execPath, entry, {
    cwd: ROOT,
    env: {
      ...process.env,
      DATABASE_URL: options.databaseUrl,
      KAFKA_BROKERS: options.brokers,
      // The endpoints are served as in production, on a free port.
      HTTP_PORT: '0',
      LOG_LEVEL: 'info',
      BENCH_SINK: sink,
      KAFKA_CLIENT: sink.startsWith('rdkafka') ? 'rdkafka' : 'kafkajs',
      DELIVERY: sink === 'rdkafka-eos' ? 'exactly-once' : 'at-least-once',
      ...options.env,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const active = new Promise<void>((resolve, reject) => {
    child.once('exit', (code) => {
      reject(new Error(`relay exited with code ${String(code)} before it became active`));
    });
    splitLines(child.stderr, (line) => {
      let entryLog: { level?: number; msg?: string } = {};
      try {
        entryLog = JSON.parse(line) as typeof entryLog;
      } catch {
        process.stderr.write(`  relay: ${line}\n`);
        return;
      }
      options.onLog?.(entryLog);
      if (entryLog.msg === 'active: shipping events') resolve();
      const threshold = options.quiet ? 50 : 40;
      if ((entryLog.level ?? 0) >= threshold) process.stderr.write(`  relay: ${line}\n`);
    });
  });
  active.catch(() => undefined);
  return {
    child,
    pid: child.pid ?? 0,
    active,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** How many messages a topic holds (the sum of its partitions' end offsets). */
export async function messagesInTopic(brokers: string, topic: string): Promise<number> {
  const admin = new Kafka({
    clientId: 'pg2kafka-bench',
    brokers: brokers.split(','),
    logLevel: logLevel.NOTHING,
  }).admin();
  await admin.connect();
  try {
    const offsets = await admin.fetchTopicOffsets(topic);
    return offsets.reduce((n, o) => n + Number(o.high), 0);
  } finally {
    await admin.disconnect();
  }
}

/**
 * Runs a pgbench script (SQL text) for `seconds` with `clients` connections, at most
 * `rate` transactions/s when given; resolves to pgbench's tps.
 */
export async function pgbench(options: {
  url: string;
  script: string;
  clients: number;
  seconds: number;
  rate?: number;
  synchronousCommit?: 'on' | 'off';
}): Promise<number> {
  const { url, script, clients, seconds, rate, synchronousCommit = 'on' } = options;
  const dir = mkdtempSync(join(tmpdir(), 'pg2kafka-bench-'));
  const file = join(dir, 'script.sql');
  writeFileSync(file, script);
  const args = ['-n', '-c', String(clients), '-j', String(Math.min(clients, 2))];
  if (rate !== undefined) args.push('-R', String(rate));
  args.push('-T', String(seconds), '-f', file, url);
  try {
    const { code, stdout, stderr } = await new Promise<{
      code: number | null;
      stdout: string;
      stderr: string;
    }>((resolve, reject) => {
      const child = spawn('pgbench', args, {
        env: { ...process.env, PGOPTIONS: `-c synchronous_commit=${synchronousCommit}` },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const out = { stdout: '', stderr: '' };
      child.stdout.on('data', (chunk: Buffer) => (out.stdout += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (out.stderr += chunk.toString()));
      child.once('error', reject);
      child.once('exit', (exitCode) => {
        resolve({ code: exitCode, ...out });
      });
    });
    const tps = /tps = ([\d.]+)/.exec(stdout)?.[1];
    if (code !== 0 || tps === undefined) {
      throw new Error(
        `pgbench failed (exit ${String(code)}); is pgbench (PostgreSQL's client tools) on the PATH?\n${stdout}${stderr}`,
      );
    }
    return Number(tps);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  if (sorted.length === 0) return NaN;
  return sorted.length % 2
    ? (sorted[mid] ?? NaN)
    : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

/** Nearest-rank percentile of an ascending list. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return (
    sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ??
    NaN
  );
}

/** The order of `sides` for round `round`: rotated, so no side always goes first. */
export function rotated<T>(sides: readonly T[], round: number): T[] {
  return sides.map((_, i) => sides[(i + round) % sides.length] as T);
}
