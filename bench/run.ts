/**
 * `npm run bench [-- --quick] [-- --only drain,latency]`: the performance targets, measured
 * side by side in one run against the local PostgreSQL (DATABASE_URL, an admin
 * connection; default postgres://postgres@127.0.0.1:5432/postgres) and a local Kafka
 * broker started for the run, as `npm test` does. Prints one table and writes it, with the
 * samples and the machine's facts, to bench/results/<date>-<commit>.{json,md}.
 *
 * Cases: writers (trigger overhead), drain (events/s, with and without Kafka), latency
 * (created_at to a consumer's arrival), snapshot (a big table's existing rows copied by
 * setup() under the table lock, against the online copy in chunks), memory (relay RSS
 * with a big backlog and the broker down), held-snapshot (fetch time and latency while a
 * REPEATABLE READ transaction holds vacuum back, against the same run with none). Not
 * part of `npm test`: several minutes; --quick runs each case once, smaller.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkPostgres } from '../scripts/infrastructure.ts';
import { KafkaBroker } from '../scripts/kafka-broker.ts';
import { drain } from './cases/drain.ts';
import { heldSnapshot } from './cases/held-snapshot.ts';
import { latency } from './cases/latency.ts';
import { memory } from './cases/memory.ts';
import { snapshot } from './cases/snapshot.ts';
import { writerOverhead } from './cases/writers.ts';
import {
  machineFacts,
  markdownTable,
  summarize,
  type BenchContext,
  type Measure,
} from './report.ts';
import { ADMIN_URL, ROOT } from './support.ts';

const CASES: Record<string, (ctx: BenchContext) => Promise<Measure[]>> = {
  writers: writerOverhead,
  drain,
  latency,
  snapshot,
  memory,
  'held-snapshot': heldSnapshot,
};

function parseArgs(argv: string[]): { quick: boolean; only: string[] } {
  let quick = false;
  let only = Object.keys(CASES);
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--quick') quick = true;
    else if (arg === '--only') {
      only = (argv[(i += 1)] ?? '').split(',').filter(Boolean);
      const unknown = only.filter((c) => !(c in CASES));
      if (only.length === 0 || unknown.length > 0) {
        throw new Error(`--only takes a comma-separated list of: ${Object.keys(CASES).join(', ')}`);
      }
    } else {
      throw new Error(
        `unknown argument "${String(arg)}"; usage: npm run bench [-- --quick] [-- --only ${Object.keys(CASES).join(',')}]`,
      );
    }
  }
  return { quick, only };
}

function log(message: string): void {
  process.stderr.write(`[bench] ${message}\n`);
}

async function main(): Promise<void> {
  const { quick, only } = parseArgs(process.argv.slice(2));
  const postgresVersion = await checkPostgres(ADMIN_URL);
  const broker = await KafkaBroker.start();
  const started = Date.now();
  const measures: Measure[] = [];
  try {
    log(
      `PostgreSQL ${postgresVersion}, Kafka ${broker.runtime.version} at ${broker.brokers}; cases: ${only.join(', ')}${quick ? ' (quick)' : ''}`,
    );
    const ctx: BenchContext = { quick, broker, log };
    for (const name of only) {
      const t0 = Date.now();
      measures.push(...(await (CASES[name] as (c: BenchContext) => Promise<Measure[]>)(ctx)));
      log(`${name} done in ${Math.round((Date.now() - t0) / 1000)} s`);
    }
  } finally {
    await broker.destroy();
  }
  const facts = machineFacts(postgresVersion, broker.runtime.version);
  const summaries = measures.map(summarize);
  const table = markdownTable(summaries);
  const machine = `${facts.cores} cores (${facts.cpu}), ${facts.memoryGiB} GiB, Node ${facts.node}, PostgreSQL ${facts.postgres}, Kafka ${facts.kafka} (local, 1 broker), ${facts.kafkaClient}; commit ${facts.commit}, ${facts.date}${quick ? ', --quick' : ''}`;
  const dir = join(ROOT, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const stem = join(
    dir,
    `${facts.date.slice(0, 19).replace(/[:T]/g, '-')}-${facts.commit.split(' ')[0] ?? 'unknown'}${quick ? '-quick' : ''}`,
  );
  writeFileSync(
    `${stem}.json`,
    `${JSON.stringify({ machine: facts, quick, seconds: Math.round((Date.now() - started) / 1000), measures: summaries }, null, 2)}\n`,
  );
  writeFileSync(`${stem}.md`, `${machine}\n\n${table}\n`);
  process.stdout.write(`\n${machine}\n\n${table}\n\nwritten to ${stem}.{json,md}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(
    `${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
