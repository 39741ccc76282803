/** `pg2kafka status`: what is tracked, how much is queued, whether a relay is active. */
import type postgres from 'postgres';
import { checkSchema } from '../capture/schema.ts';
import type { Config } from '../config.ts';
import { checkConnection, openPool } from '../database.ts';
import {
  describeScope,
  formatDuration,
  pendingSnapshotList,
  progressFigures,
  snapshotRate,
  type PendingSnapshot,
} from './snapshot.ts';
import { describeVacuumHolder, VACUUM_WARN_AFTER_MS } from '../relay/vacuum-watch.ts';
import { vacuumHolder, type VacuumHolder } from '../relay/vacuum.ts';

export const statusHelp = `Usage: pg2kafka status [--json]

Shows the tracked tables, the queue depth and the age of the oldest queued event per
table, the dead letters (events Kafka refused for good) and how many keys they park, and
whether a relay is active (and which one), each online snapshot still pending (rows
copied of about how many, rate and time left, when it started), and a transaction that
has held vacuum back for more than 5 minutes (the queue cannot be cleaned while it stays
open). Then what needs attention, each with what to do: events queued with no active
relay, a key column renamed or dropped, capture triggers disabled or missing, dead
letters, such a transaction. --json prints the same as JSON (with the oldest such
transaction whatever its age, and the list as "attention").

Exit codes: 0 nothing needs attention, 3 something does (listed), 1 the status could not
be read (PostgreSQL unreachable), 2 bad usage or configuration.
`;

export interface Status {
  relay: { active: boolean; holder: string | null; expiresInMs: number | null };
  queue: { events: number; oldestAgeSeconds: number | null };
  /** Events set aside in pg2kafka.dead_letters, and the distinct (table, key) pairs they park. */
  deadLetters: { total: number; parkedKeys: number };
  tables: Array<{
    table: string;
    externalIdColumn: string;
    fullRow: boolean;
    /** Its payload settings as PostgreSQL says them, '(without the columns "ssn"; …)'; '' for none. */
    payload: string;
    /**
     * Excluded columns the table no longer has (renamed or dropped): its events then carry
     * only the key columns, until alter() names the columns again.
     */
    excludedMissing: string[];
    capturing: boolean;
    /** False when the external id column was renamed or dropped: keys come out NULL. */
    keyColumnExists: boolean;
    /**
     * Capture triggers that do not fire for ordinary writes (ALTER TABLE … DISABLE TRIGGER,
     * or ENABLE REPLICA TRIGGER), on the table or a partition, as "trigger on table".
     */
    triggersDisabled: string[];
    /** Capture triggers missing from a table still captured (dropped by hand). */
    triggersMissing: string[];
    /** The table was dropped; its queued events still ship, under the names recorded. */
    dropped: boolean;
    queued: number;
    oldestAgeSeconds: number | null;
  }>;
  /** Online snapshots not finished yet (pg2kafka.snapshots), oldest first. */
  snapshots: Array<
    PendingSnapshot & {
      /** Rows copied per second since it started. */
      rowsPerSecond: number;
      /** About how long the rest takes at that rate; null when unknown. */
      secondsLeft: number | null;
    }
  >;
  /** The session whose transaction or snapshot is the oldest in this database, if any. */
  vacuumHolder: VacuumHolder | null;
  /** What needs someone's attention; `pg2kafka status` exits 3 when this is not empty. */
  attention: string[];
}

/**
 * Reads the status. Throws DatabaseUnreachableError / DatabaseRefusedError when PostgreSQL
 * cannot be reached or refuses, SchemaError when the pg2kafka schema is missing or old;
 * `warnings` gets what is worth saying but not fatal (a newer schema).
 */
export async function statusCommand(config: Config, warnings: string[] = []): Promise<Status> {
  const sql = openPool(config.databaseUrl, {
    connection: { application_name: 'pg2kafka status' },
  });
  try {
    await checkConnection(sql, config.databaseUrl);
    warnings.push(...(await checkSchema(sql)).warnings);
    return await readStatus(sql);
  } finally {
    await sql.end({ timeout: 2 });
  }
}

/** Reads the status through `sql` (the relay's /status uses its endpoints' pool). */
export async function readStatus(sql: postgres.Sql): Promise<Status> {
  const [lease] = await sql<
    { active: boolean; holder: string | null; expires_in_ms: number | null }[]
  >`
    select expires_at > clock_timestamp() as active, holder,
           case when expires_at > clock_timestamp()
                then (extract(epoch from expires_at - clock_timestamp()) * 1000)::int end as expires_in_ms
    from pg2kafka.relay_lease`;
  const tables = await sql<
    {
      table: string;
      column: string;
      full_row: boolean;
      payload: string;
      excluded_missing: string[];
      capturing: boolean;
      key_exists: boolean;
      disabled: string[];
      missing: string[];
      dropped: boolean;
      queued: string;
      oldest: number | null;
    }[]
  >`
    -- format's %I raises on NULL: a dropped table (no pg_class row) takes its recorded name.
    select case when c.oid is null then format('%I.%I', t.schema_name, t.table_name) || ' (dropped)'
                else format('%I.%I', n.nspname, c.relname) end as table,
           t.external_id_column as column, t.full_row, t.capturing,
           ltrim(pg2kafka.payload_phrase(t)) as payload,
           array(select x.name from unnest(t.excluded_columns) x(name)
                 where c.oid is not null and not exists (select 1 from pg_attribute a where a.attrelid = t.table_oid
                                                         and a.attname = x.name and a.attnum > 0 and not a.attisdropped)
                 order by 1) as excluded_missing,
           not exists (select 1 from unnest(t.key_columns) k(name)
                       where not exists (select 1 from pg_attribute a where a.attrelid = t.table_oid
                                         and a.attname = k.name and not a.attisdropped)) as key_exists,
           -- 'D': disabled; 'R': fires only under session_replication_role = replica.
           array(select format('%s on %s', tg.tgname, tg.tgrelid::regclass)
                 from pg_trigger tg
                 -- The capturing triggers, also by their names before 0.1.0 (migrate renames
                 -- them); not the wake-up trigger, which captures nothing.
                 where c.oid is not null and t.capturing
                   and tg.tgname in ('_pg2kafka_insert', '_pg2kafka_update', '_pg2kafka_delete', '_pg2kafka_truncate',
                                     'pg2kafka_insert', 'pg2kafka_update', 'pg2kafka_delete', 'pg2kafka_truncate')
                   and tg.tgenabled in ('D', 'R')
                   and tg.tgrelid in (select p.relid from pg_partition_tree(t.table_oid) p)
                 order by 1) as disabled,
           array(select e.name from unnest(array['_pg2kafka_insert', '_pg2kafka_update',
                                                 '_pg2kafka_delete', '_pg2kafka_truncate']) e(name)
                 where c.oid is not null and t.capturing
                   and not exists (select 1 from pg_trigger tg
                                   where tg.tgrelid = t.table_oid
                                     and tg.tgname in (e.name, substr(e.name, 2)))
                 order by 1) as missing,
           c.oid is null as dropped,
           coalesce(q.queued, 0)::text as queued, q.oldest
    from pg2kafka.tracked_tables t
    left join pg_class c on c.oid = t.table_oid
    left join pg_namespace n on n.oid = c.relnamespace
    left join (
      select table_oid, count(*) as queued,
             extract(epoch from clock_timestamp() - min(created_at))::float8 as oldest
      from pg2kafka.captured_changes group by table_oid
    ) q on q.table_oid = t.table_oid
    where t.capturing or q.queued > 0
    order by 1`;
  const [counts] = await sql<{ total: string; parked_keys: string }[]>`
    select (select count(*) from pg2kafka.dead_letters)::text as total,
           (select count(*) from (
              select distinct d.table_oid, k
              from pg2kafka.dead_letters d, unnest(d.keys) k
              where d.parked) p)::text as parked_keys`;
  const deadLetters = {
    total: Number(counts?.total ?? 0),
    parkedKeys: Number(counts?.parked_keys ?? 0),
  };
  const now = Date.now();
  const snapshots = (await pendingSnapshotList(sql)).map((p) => {
    const rate = snapshotRate(p, now);
    return {
      ...p,
      rowsPerSecond: Math.round(rate),
      secondsLeft:
        p.rowsEstimated !== null && rate > 0 && p.rowsEstimated > p.rowsDone
          ? Math.ceil((p.rowsEstimated - p.rowsDone) / rate)
          : null,
    };
  });
  const holder = await vacuumHolder(sql);
  const queued = tables.reduce((n, t) => n + Number(t.queued), 0);
  const ages = tables.map((t) => t.oldest).filter((a): a is number => a !== null);
  const status: Status = {
    relay: {
      active: lease?.active ?? false,
      holder: lease?.active ? lease.holder : null,
      expiresInMs: lease?.expires_in_ms ?? null,
    },
    queue: { events: queued, oldestAgeSeconds: ages.length > 0 ? Math.max(...ages) : null },
    deadLetters,
    tables: tables.map((t) => ({
      table: t.table,
      externalIdColumn: t.column,
      fullRow: t.full_row,
      payload: t.payload,
      excludedMissing: t.excluded_missing,
      capturing: t.capturing,
      keyColumnExists: t.key_exists,
      triggersDisabled: t.disabled,
      triggersMissing: t.missing,
      dropped: t.dropped,
      queued: Number(t.queued),
      oldestAgeSeconds: t.oldest,
    })),
    snapshots,
    vacuumHolder: holder ?? null,
    attention: [],
  };
  status.attention = attentionOf(status);
  return status;
}

/** What in `status` needs someone to act, each with what to do. */
export function attentionOf(status: Status): string[] {
  const list: string[] = [];
  if (!status.relay.active && status.queue.events > 0) {
    list.push(
      `no relay is active and ${status.queue.events} event(s) are queued: start pg2kafka relay`,
    );
  } else if (!status.relay.active && status.snapshots.length > 0) {
    list.push(
      `no relay is active to copy ${status.snapshots.length} pending snapshot(s): start pg2kafka relay, or run pg2kafka snapshot`,
    );
  }
  for (const t of status.tables) {
    if (!t.keyColumnExists && !t.dropped) {
      list.push(
        `${t.table}: its key column ${t.externalIdColumn} was renamed or dropped, so the relay holds its events back (they have no key): run pg2kafka teardown and pg2kafka setup again with a column it has`,
      );
    }
    if (t.triggersDisabled.length > 0) {
      list.push(
        `${t.table}: capture triggers do not fire for ordinary writes (${t.triggersDisabled.join(', ')}): enable them (ALTER TABLE … ENABLE TRIGGER …); changes made meanwhile were not captured, pg2kafka resnapshot sends the rows again`,
      );
    }
    if (t.triggersMissing.length > 0) {
      list.push(
        `${t.table}: capture triggers are missing (${t.triggersMissing.join(', ')}), so its changes are not captured: run pg2kafka teardown and pg2kafka setup again`,
      );
    }
  }
  if (status.deadLetters.total > 0) {
    list.push(
      `${status.deadLetters.total} dead letter(s), Kafka refused them for good: pg2kafka dead-letters lists them`,
    );
  }
  const holder = status.vacuumHolder;
  if (holder && (holder.transactionSeconds ?? 0) * 1000 >= VACUUM_WARN_AFTER_MS) {
    list.push(`vacuum: ${describeVacuumHolder(holder)}`);
  }
  return list;
}

function formatDeadLetterCounts(deadLetters: Status['deadLetters']): string {
  if (deadLetters.total === 0) return 'dead letters: none';
  return `dead letters: ${deadLetters.total}, parking ${deadLetters.parkedKeys} key(s) (list them with: pg2kafka dead-letters)`;
}

/** 2026-12-02T11:36:01Z */
function isoSeconds(date: Date): string {
  return new Date(date).toISOString().replace(/\.\d+Z$/, 'Z');
}

export function formatStatus(status: Status): string {
  const lines = [
    status.relay.active
      ? `relay: active (${status.relay.holder ?? 'unknown'})`
      : 'relay: none active',
    `queue: ${status.queue.events} event(s)${status.queue.oldestAgeSeconds === null ? '' : `, oldest ${status.queue.oldestAgeSeconds.toFixed(1)} s old`}`,
    formatDeadLetterCounts(status.deadLetters),
    status.tables.length === 0 ? 'tables: none set up' : 'tables:',
    ...status.tables.map(
      (t) =>
        `  ${t.table} key=${t.externalIdColumn}${t.fullRow ? ' full-row' : ''}${t.payload ? ` ${t.payload}` : ''}${t.capturing ? '' : ' (torn down)'}` +
        (t.keyColumnExists
          ? ''
          : ' (KEY COLUMN MISSING: renamed or dropped; run teardown and setup again)') +
        `${t.excludedMissing.length === 0 ? '' : ` (EXCLUDED COLUMN ${t.excludedMissing.map((c) => `"${c}"`).join(', ')} MISSING: renamed or dropped, so its events carry only the key; name the columns again with pg2kafka alter ${t.table} --exclude=...)`}: ` +
        `${t.queued} queued${t.oldestAgeSeconds === null ? '' : `, oldest ${t.oldestAgeSeconds.toFixed(1)} s`}`,
    ),
  ];
  if (status.snapshots.length > 0) {
    lines.push('snapshots pending:');
    for (const s of status.snapshots) {
      const rate = s.rowsPerSecond;
      const idle = Math.max(0, (Date.now() - new Date(s.updatedAt).getTime()) / 1000);
      lines.push(
        `  ${s.table}${describeScope(s)}: ` +
          `${progressFigures(s.rowsDone, s.rowsEstimated, rate)}; ` +
          `started ${isoSeconds(s.startedAt)}, last chunk ${new Date(s.updatedAt).getTime() === new Date(s.startedAt).getTime() ? 'none yet' : `${formatDuration(idle)} ago`}`,
      );
    }
    if (!status.relay.active) {
      lines.push('  no relay is active to copy them: pg2kafka snapshot copies them now');
    }
  }
  const holder = status.vacuumHolder;
  if (holder && (holder.transactionSeconds ?? 0) * 1000 >= VACUUM_WARN_AFTER_MS) {
    lines.push(`vacuum: ${describeVacuumHolder(holder)}`);
  }
  const others = status.attention.filter((a) => !a.startsWith('vacuum: '));
  if (others.length > 0) lines.push('attention:', ...others.map((a) => `  ${a}`));
  return `${lines.join('\n')}\n`;
}
