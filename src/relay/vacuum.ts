/**
 * Which session holds vacuum back in this database: the one whose transaction id or
 * snapshot (backend_xid, backend_xmin in pg_stat_activity) is the oldest. While it stays
 * open, the rows the relay deletes cannot be removed, and the queue table and its index
 * grow (the fetch itself starts at the queue floor, floor.ts, so it does not slow down).
 *
 * Read once in a while (`status`, a periodic warning), never on the relay's hot path.
 *
 * What counts: client sessions of this database, and WAL senders (no database; with
 * hot_standby_feedback a standby's queries hold vacuum back here too). Not counted: this
 * connection, and autovacuum workers (a lazy VACUUM's snapshot is ignored by other
 * vacuums). Other things that hold vacuum back are not sessions and are not reported here:
 * prepared transactions (pg_prepared_xacts) and replication slots (pg_replication_slots).
 *
 * Privileges: without pg_read_all_stats (or being the same role), pg_stat_activity still
 * shows another role's pid, application name and xmin, but not its state, start times,
 * backend type or query: those come back undefined (VacuumWatch then counts the time
 * from when it first saw that pid and xmin).
 */
import type postgres from 'postgres';

export interface VacuumHolder {
  pid: number;
  /** Age in transactions of the older of its transaction id and its snapshot's xmin. */
  xidAge: number;
  /** That older transaction id itself: with the pid, it tells one transaction from the next. */
  xmin: string;
  /** Seconds since its transaction began (undefined when not visible or a WAL sender). */
  transactionSeconds: number | undefined;
  state: string | undefined;
  applicationName: string;
  backendType: string;
  userName: string | undefined;
  transactionStart: Date | undefined;
  queryStart: Date | undefined;
  /** The start of its current or last query, on one line, at most QUERY_TEXT_CHARS long. */
  query: string | undefined;
}

/** Characters of the holder's query text returned. */
export const QUERY_TEXT_CHARS = 120;

/** Every column is one lowercase word: the caller's pool may transform column names. */
interface Row {
  pid: number;
  age: number;
  xmin: string;
  seconds: number | null;
  state: string | null;
  application: string | null;
  backend: string | null;
  username: string | null;
  began: Date | null;
  queried: Date | null;
  query: string | null;
}

/** The session holding vacuum back in the current database, or undefined when none does. */
export async function vacuumHolder(
  sql: postgres.Sql | postgres.TransactionSql,
): Promise<VacuumHolder | undefined> {
  const [row] = await sql<Row[]>`
    select a.pid,
           greatest(age(a.backend_xid), age(a.backend_xmin)) as age,
           case when a.backend_xmin is null or age(a.backend_xid) > age(a.backend_xmin)
                then a.backend_xid else a.backend_xmin end::text as xmin,
           extract(epoch from clock_timestamp() - a.xact_start)::float8 as seconds,
           a.state, a.application_name as application, a.backend_type as backend,
           a.usename::text as username, a.xact_start as began, a.query_start as queried,
           left(regexp_replace(a.query, '[[:space:]]+', ' ', 'g'), ${QUERY_TEXT_CHARS}) as query
    from pg_catalog.pg_stat_activity a
    where a.pid <> pg_backend_pid()
      and (a.backend_xid is not null or a.backend_xmin is not null)
      and (a.datname = current_database() or (a.datid is null and a.backend_type = 'walsender'))
      and a.backend_type is distinct from 'autovacuum worker'
    order by greatest(age(a.backend_xid), age(a.backend_xmin)) desc, a.xact_start nulls last
    limit 1`;
  if (!row) return undefined;
  return {
    pid: row.pid,
    xidAge: row.age,
    xmin: row.xmin,
    transactionSeconds: row.seconds ?? undefined,
    state: row.state ?? undefined,
    applicationName: row.application ?? '',
    backendType: row.backend ?? '',
    userName: row.username ?? undefined,
    transactionStart: row.began ?? undefined,
    queryStart: row.queried ?? undefined,
    query: row.query ?? undefined,
  };
}
