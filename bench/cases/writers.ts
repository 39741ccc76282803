/**
 * Writer overhead of the capture trigger: throughput of the same statements on a
 * 100k-row table with the trigger and on an identical table without it, measured with
 * pgbench in one run, the two sides alternated round by round (this machine is shared
 * and noisy). Each round gives one ratio tracked / plain; the report shows their median
 * and range. The 16-writer cases also measure payload control: a table set up with a row
 * filter that every row passes (the WHEN clauses' cost, every event still written) and
 * one with an excluded column (the projected capture).
 */
import postgres from 'postgres';
import type { BenchContext, Measure, Target } from '../report.ts';
import { benchDatabase, createItems, median, pgbench, rotated } from '../support.ts';

interface WriterCase {
  name: string;
  statement: 'insert' | 'update' | 'bulk';
  clients: number;
  synchronousCommit: 'on' | 'off';
  target?: Target;
  note?: string;
  /** Also measure the tables set up with a row filter and with an excluded column. */
  payload?: boolean;
}

const CASES: WriterCase[] = [
  {
    name: 'INSERT, 16 writers, sync commit on',
    statement: 'insert',
    clients: 16,
    synchronousCommit: 'on',
    target: { op: '>=', value: 0.8 },
    payload: true,
  },
  {
    name: 'UPDATE, 16 writers, sync commit on',
    statement: 'update',
    clients: 16,
    synchronousCommit: 'on',
    target: { op: '>=', value: 0.7 },
    payload: true,
  },
  {
    name: 'INSERT, 2 writers, sync commit off',
    statement: 'insert',
    clients: 2,
    synchronousCommit: 'off',
    note: 'original: 0.49',
  },
  {
    name: 'UPDATE, 2 writers, sync commit off',
    statement: 'update',
    clients: 2,
    synchronousCommit: 'off',
    note: 'original: 0.34',
  },
  {
    name: 'INSERT … SELECT of 10k rows, 1 writer',
    statement: 'bulk',
    clients: 1,
    synchronousCommit: 'on',
    target: { op: '>=', value: 0.5 },
  },
];

const ROWS = 100_000;
const SIDES = ['plain', 'tracked'] as const;
const PAYLOAD_SIDES = ['plain', 'tracked', 'filtered', 'excluded'] as const;
type Side = (typeof PAYLOAD_SIDES)[number];

function script(statement: WriterCase['statement'], table: string): string {
  switch (statement) {
    case 'insert':
      return `insert into ${table} (sku, name, description, price, qty) values ('N-' || :client_id || '-' || random(), 'Big Red Coffee Mug', 'A mug', 9.99, 3);\n`;
    case 'update':
      return `\\set id random(1, ${ROWS})\nupdate ${table} set qty = qty + 1 where id = :id;\n`;
    case 'bulk':
      return `insert into ${table} (sku, name, description, price, qty) select 'B-' || g || '-' || random(), 'Product ' || g, repeat('lorem ipsum ', 8), g % 1000 + 0.99, g % 50 from generate_series(1, 10000) g;\n`;
  }
}

export async function writerOverhead(ctx: BenchContext): Promise<Measure[]> {
  const rounds = ctx.quick ? 1 : 3;
  const seconds = ctx.quick ? 3 : 8;
  const db = await benchDatabase('writers');
  const sql = postgres(db.url, { max: 1, onnotice: () => undefined });
  const measures: Measure[] = [];
  try {
    for (const table of PAYLOAD_SIDES) {
      await createItems(sql, table, ROWS);
      await sql.unsafe(`vacuum analyze ${table}`);
    }
    await sql`select pg2kafka.setup('tracked', 'sku')`;
    await sql`select pg2kafka.setup('filtered', 'sku', row_filter => 'price > 0')`;
    await sql`select pg2kafka.setup('excluded', 'sku', exclude_columns => '{description}')`;
    await sql`delete from pg2kafka.captured_changes`;
    for (const c of CASES) {
      const sides: readonly Side[] = c.payload ? PAYLOAD_SIDES : SIDES;
      const tps: Record<Side, number[]> = { plain: [], tracked: [], filtered: [], excluded: [] };
      for (let round = 0; round < rounds; round += 1) {
        for (const side of rotated(sides, round)) {
          await sql`delete from pg2kafka.captured_changes`;
          await sql`checkpoint`;
          tps[side].push(
            await pgbench({
              url: db.url,
              script: script(c.statement, side),
              clients: c.clients,
              seconds,
              synchronousCommit: c.synchronousCommit,
            }),
          );
        }
        ctx.log(
          `${c.name}, round ${round + 1}/${rounds}: ${sides.map((side) => `${side} ${tps[side].at(-1)?.toFixed(0)}`).join(', ')} statements/s`,
        );
      }
      const perRow = c.statement === 'bulk' ? 10_000 : 1;
      measures.push(
        {
          case: 'writers',
          measure: `${c.name}: tracked / plain`,
          unit: '',
          samples: tps.plain.map((p, i) => (tps.tracked[i] ?? 0) / p),
          ...(c.target ? { target: c.target } : {}),
          ...(c.note ? { note: c.note } : {}),
        },
        {
          case: 'writers',
          measure: `${c.name}: tracked`,
          unit: 'rows/s',
          samples: tps.tracked.map((t) => t * perRow),
          note: `plain: ${Math.round(median(tps.plain) * perRow).toLocaleString('en-US')} rows/s`,
        },
        ...(c.payload
          ? (['filtered', 'excluded'] as const).map((side) => ({
              case: 'writers',
              measure: `${c.name}: ${side === 'filtered' ? 'row filter (every row passes)' : 'one column excluded'} / plain`,
              unit: '',
              samples: tps.plain.map((p, i) => (tps[side][i] ?? 0) / p),
              note: 'payload control',
            }))
          : []),
      );
    }
    return measures;
  } finally {
    await sql.end({ timeout: 5 });
    await db.drop();
  }
}
