/**
 * `pg2kafka dead-letters [list] [--json] [--table <table>]`, `pg2kafka dead-letters retry
 * <id>... | --all` and `pg2kafka dead-letters discard <id>... | --all`: the operator's view
 * of the events Kafka refused for good (pg2kafka.dead_letters, filled by the relay), and
 * the SQL functions that put them back in the queue or drop them (sql/40_dead_letters.sql).
 *
 * Retry and discard by id are all or nothing: when an id is not a dead letter, nothing is
 * changed and the missing ids are reported (the function runs, then its transaction is
 * rolled back).
 */
import type postgres from 'postgres';
import { checkSchema } from '../capture/schema.ts';
import type { Config } from '../config.ts';
import { checkConnection, openPool } from '../database.ts';
import { UsageError } from '../errors.ts';

export const deadLettersHelp = `Usage: pg2kafka dead-letters [list] [--json] [--table <table>]
       pg2kafka dead-letters retry <id>... | --all
       pg2kafka dead-letters discard <id>... | --all

Dead letters are events Kafka refused for good because of the record itself (too large
for the topic, an invalid record such as a null key on a compacted topic), set aside by
the relay so that nothing is lost and nothing else
waits. With DEAD_LETTER_POLICY=park-key (the default) a dead letter parks its key: the
key's later changes follow it here until they are retried or discarded.

  (list)    one line per dead letter, oldest id first: id, table, statement, key, error,
            reason, whether it parks its key, when it was set aside, payload size in
            bytes. --json prints a JSON array, payloads included. --table <table> shows
            only that table's.
  retry     puts the dead letters back in the queue under their original ids, so they
            ship ahead of their key's later changes. A parked key goes back whole: every
            parked dead letter sharing a table and key with the ids given goes too.
            --all retries every dead letter. The relay ships them as usual (fix the cause
            first, e.g. the topic's max.message.bytes, or they come back here).
  discard   drops exactly the dead letters given (--all: every one) for good. The rest of
            a parked key stays parked until it is retried or discarded too.

Same as: SELECT * FROM pg2kafka.retry_dead_letters(ARRAY[<id>, ...]) (NULL for all),
         SELECT * FROM pg2kafka.discard_dead_letters(ARRAY[<id>, ...]) (NULL for all).
`;

const LIST_HINT = 'list them with: pg2kafka dead-letters';

export interface DeadLetter {
  id: number;
  /** The table's current name (schema.table), or the name it had followed by " (dropped)". */
  table: string;
  statement: string;
  topic: string;
  /** The refused event's key (the external id); null for TRUNCATE or a NULL external id. */
  key: string | null;
  /** Every key the change's events carry (two for a key change); what `parked` parks. */
  keys: Array<string | null>;
  errorCode: string;
  reason: string;
  /** Sends Kafka refused before the change was set aside. */
  attempts: number;
  /** Whether it parks its keys: their later changes wait with it. */
  parked: boolean;
  /** When the change was captured. */
  createdAt: Date;
  firstFailedAt: Date;
  deadLetteredAt: Date;
  /** Size of the refused message value in bytes (UTF-8), null without a value. */
  payloadBytes: number | null;
  /** The refused message value; only when listed with `payload: true`. */
  payload?: string | null;
}

export type DeadLetterSelection = 'all' | number[];

export type DeadLettersAction =
  | { action: 'list'; json: boolean; table?: string }
  | { action: 'retry' | 'discard'; selection: DeadLetterSelection };

export interface RetryResult {
  /** Ids put back in the queue, lowest first. */
  ids: number[];
  /** Ids put back without being asked for: parked under a key shared with those asked for. */
  widened: number[];
}

export interface DiscardResult {
  /** Ids dropped, lowest first. */
  ids: number[];
  /** Parked dead letters left that share a table and key with those dropped. */
  stillParked: number[];
}

/**
 * Runs `run` on a connection checked first: PostgreSQL reachable within the connect
 * deadline (else DatabaseUnreachableError / DatabaseRefusedError) and the pg2kafka schema
 * of this version installed (else SchemaError, which says to run pg2kafka migrate). What
 * the schema check says but does not refuse goes to `warnings`.
 */
async function withConnection<T>(
  config: Config,
  warnings: string[] | undefined,
  run: (sql: postgres.Sql) => Promise<T>,
): Promise<T> {
  const sql = openPool(config.databaseUrl, {
    connection: { application_name: 'pg2kafka dead-letters' },
  });
  try {
    await checkConnection(sql, config.databaseUrl);
    warnings?.push(...(await checkSchema(sql)).warnings);
    return await run(sql);
  } finally {
    await sql.end({ timeout: 2 });
  }
}

const sortIds = (ids: Iterable<number>): number[] => [...ids].sort((a, b) => a - b);

function parseId(arg: string): number {
  const id = /^[0-9]+$/.test(arg) ? Number(arg) : NaN;
  if (!Number.isSafeInteger(id) || id < 1) {
    throw new UsageError(
      `dead letter id must be a whole number such as 42, got "${arg}" (${LIST_HINT})`,
    );
  }
  return id;
}

/** Parses the arguments after `pg2kafka dead-letters`; throws UsageError on bad usage. */
export function parseDeadLettersArgs(args: string[]): DeadLettersAction {
  const [first, ...rest] = args;
  if (first === 'retry' || first === 'discard') {
    const ids: number[] = [];
    let all = false;
    for (const arg of rest) {
      if (arg === '--all') all = true;
      else if (arg.startsWith('--')) throw new UsageError(`unknown option ${arg}`);
      else ids.push(parseId(arg));
    }
    const expects = `pg2kafka dead-letters ${first} expects dead letter ids or --all`;
    if (all && ids.length > 0) throw new UsageError(`${expects}, not both (${LIST_HINT})`);
    if (!all && ids.length === 0) throw new UsageError(`${expects}, got neither (${LIST_HINT})`);
    return { action: first, selection: all ? 'all' : sortIds(new Set(ids)) };
  }

  const listArgs = first === 'list' ? rest : args;
  let json = false;
  let table: string | undefined;
  for (let i = 0; i < listArgs.length; i++) {
    const arg = listArgs[i] ?? '';
    if (arg === '--json') json = true;
    else if (arg === '--table') {
      const value = listArgs[i + 1];
      if (value === undefined || value.startsWith('--')) {
        throw new UsageError('--table needs a table name, e.g. --table public.orders');
      }
      table = value;
      i++;
    } else if (arg.startsWith('--')) throw new UsageError(`unknown option ${arg}`);
    else {
      throw new UsageError(
        `pg2kafka dead-letters expects list, retry or discard, got "${arg}". Run pg2kafka dead-letters --help for usage.`,
      );
    }
  }
  return table === undefined ? { action: 'list', json } : { action: 'list', json, table };
}

interface DeadLetterRow {
  id: string;
  table: string;
  statement: string;
  topic: string;
  external_id: string | null;
  keys: Array<string | null>;
  error_code: string;
  reason: string;
  attempts: number;
  parked: boolean;
  created_at: Date;
  first_failed_at: Date;
  dead_lettered_at: Date;
  payload_bytes: number | null;
  payload?: string | null;
}

/**
 * The dead letters, oldest id first; `table` keeps one table's (current or, once dropped,
 * former name). `warnings` gets what the schema check says but does not refuse.
 */
export async function listDeadLetters(
  config: Config,
  options: { table?: string; payload?: boolean; warnings?: string[] } = {},
): Promise<DeadLetter[]> {
  return withConnection(config, options.warnings, async (sql) => {
    let filter = sql`true`;
    if (options.table !== undefined) {
      const { table } = options;
      let found: { current: boolean; former: boolean } | undefined;
      try {
        [found] = await sql<{ current: boolean; former: boolean }[]>`
          select to_regclass(${table}) is not null as current,
                 exists (select 1 from pg2kafka.dead_letters
                         where format('%I.%I', schema_name, table_name) = ${table}
                            or table_name = ${table}) as former`;
      } catch (error) {
        // invalid_name: a name that is not one, such as 'a.b.c.d' or '"unclosed'.
        if ((error as { code?: unknown }).code !== '42602') throw error;
        throw new UsageError(`${(error as Error).message} (table argument: ${table})`);
      }
      if (found?.current) filter = sql`d.table_oid = to_regclass(${table})`;
      else if (found?.former) {
        filter = sql`(format('%I.%I', d.schema_name, d.table_name) = ${table}
                      or d.table_name = ${table})`;
      } else {
        throw new UsageError(
          `relation "${table}" does not exist and has no dead letters (table argument: ${table})`,
        );
      }
    }
    const rows = await sql<DeadLetterRow[]>`
      select d.id::text as id,
             case when c.oid is null
                  then format('%I.%I', d.schema_name, d.table_name) || ' (dropped)'
                  else format('%I.%I', n.nspname, c.relname) end as table,
             -- As JSON: postgres.js reads a NULL element of a text[] as the string 'NULL'.
             d.statement, d.topic, d.external_id, to_json(d.keys) as keys, d.error_code, d.reason, d.attempts,
             d.parked, d.created_at, d.first_failed_at, d.dead_lettered_at,
             octet_length(d.payload) as payload_bytes
             ${options.payload ? sql`, d.payload` : sql``}
      from pg2kafka.dead_letters d
      left join pg_class c on c.oid = d.table_oid
      left join pg_namespace n on n.oid = c.relnamespace
      where ${filter}
      order by d.id`;
    return rows.map((r) => ({
      id: Number(r.id),
      table: r.table,
      statement: r.statement,
      topic: r.topic,
      key: r.external_id,
      keys: r.keys,
      errorCode: r.error_code,
      reason: r.reason,
      attempts: r.attempts,
      parked: r.parked,
      createdAt: r.created_at,
      firstFailedAt: r.first_failed_at,
      deadLetteredAt: r.dead_lettered_at,
      payloadBytes: r.payload_bytes,
      ...(options.payload ? { payload: r.payload ?? null } : {}),
    }));
  });
}

function notFound(requested: number[], found: Iterable<number>, verb: string): UsageError {
  const seen = new Set(found);
  const missing = requested.filter((id) => !seen.has(id));
  return new UsageError(
    `no dead letter with id ${missing.join(', ')}: nothing was ${verb} (${LIST_HINT})`,
  );
}

/** The functions' `ids` argument: NULL for all, else the ids (sent as text, cast to bigint[]). */
const idsArgument = (selection: DeadLetterSelection): string[] | null =>
  selection === 'all' ? null : selection.map(String);

/**
 * pg2kafka.retry_dead_letters: puts the selected dead letters, widened to their parked keys,
 * back in the queue and wakes a sleeping relay. An id that is not a dead letter: UsageError,
 * nothing changed.
 */
export async function retryDeadLetters(
  config: Config,
  selection: DeadLetterSelection,
  warnings: string[] = [],
): Promise<RetryResult> {
  return withConnection(config, warnings, async (sql) => {
    return sql.begin(async (tx) => {
      const rows = await tx<{ id: string }[]>`
        select id::text as id from pg2kafka.retry_dead_letters(${idsArgument(selection)}::bigint[]) as id`;
      const ids = sortIds(rows.map((r) => Number(r.id)));
      if (selection !== 'all' && selection.some((id) => !ids.includes(id)))
        throw notFound(selection, ids, 'retried');
      const asked = new Set(selection === 'all' ? ids : selection);
      return { ids, widened: ids.filter((id) => !asked.has(id)) };
    });
  });
}

/**
 * pg2kafka.discard_dead_letters: drops exactly the selected dead letters. An id that is
 * not a dead letter: UsageError, nothing changed.
 */
export async function discardDeadLetters(
  config: Config,
  selection: DeadLetterSelection,
  warnings: string[] = [],
): Promise<DiscardResult> {
  return withConnection(config, warnings, async (sql) => {
    return sql.begin(async (tx) => {
      // The parked dead letters of the same keys, read before they are dropped: they stay.
      const group =
        selection === 'all'
          ? []
          : await tx<{ id: string }[]>`
              select id::text as id from pg2kafka.dead_letter_group(${idsArgument(selection)}::bigint[]) as id`;
      const rows = await tx<{ id: string }[]>`
        select id::text as id from pg2kafka.discard_dead_letters(${idsArgument(selection)}::bigint[]) as id`;
      const ids = sortIds(rows.map((r) => Number(r.id)));
      if (selection !== 'all' && selection.some((id) => !ids.includes(id)))
        throw notFound(selection, ids, 'discarded');
      const dropped = new Set(ids);
      return {
        ids,
        stillParked: sortIds(group.map((r) => Number(r.id)).filter((id) => !dropped.has(id))),
      };
    });
  });
}

/** Spaces and control characters (a newline in a reason) become one space: one line each. */
const oneLine = (text: string): string => text.replace(/[\s\p{Cc}]+/gu, ' ').trim();

export function formatDeadLetters(deadLetters: DeadLetter[]): string {
  if (deadLetters.length === 0) return 'no dead letters\n';
  const header = [
    'id',
    'table',
    'statement',
    'key',
    'error',
    'reason',
    'parked',
    'dead lettered at',
    'bytes',
  ];
  const rows = deadLetters.map((d) => [
    String(d.id),
    oneLine(d.table),
    d.statement,
    // JSON: a key "null" or with spaces stays distinct from no key at all.
    oneLine(JSON.stringify(d.key)),
    oneLine(d.errorCode),
    oneLine(d.reason),
    d.parked ? 'yes' : 'no',
    d.deadLetteredAt.toISOString(),
    d.payloadBytes === null ? '-' : String(d.payloadBytes),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((cell, i) => cell.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [
    'dead letters, oldest first (key shown as JSON: null = no key):',
    line(header),
    ...rows.map(line),
    `${deadLetters.length} dead letter(s); retry with: pg2kafka dead-letters retry <id>... | --all; drop with: pg2kafka dead-letters discard <id>... | --all`,
    '',
  ].join('\n');
}

export function formatRetry(result: RetryResult): string {
  if (result.ids.length === 0) return 'no dead letters: nothing to retry\n';
  const lines = [`${result.ids.length} change(s) back in the queue: ${result.ids.join(', ')}`];
  if (result.widened.length > 0) {
    lines.push(
      `also retried ${result.widened.join(', ')}: parked under the same key as the ids given (a parked key goes back whole, in id order)`,
    );
  }
  return `${lines.join('\n')}\n`;
}

export function formatDiscard(result: DiscardResult): string {
  if (result.ids.length === 0) return 'no dead letters: nothing to discard\n';
  const lines = [`${result.ids.length} dead letter(s) discarded: ${result.ids.join(', ')}`];
  if (result.stillParked.length > 0) {
    lines.push(
      `still parked under the same key: ${result.stillParked.join(', ')} (retry or discard them too to release the key)`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/** Runs a parsed `pg2kafka dead-letters` command; returns what it prints (warnings aside). */
export async function deadLettersCommand(
  config: Config,
  action: DeadLettersAction,
  warnings: string[] = [],
): Promise<string> {
  switch (action.action) {
    case 'list': {
      const options = {
        payload: action.json,
        warnings,
        ...(action.table === undefined ? {} : { table: action.table }),
      };
      const deadLetters = await listDeadLetters(config, options);
      return action.json
        ? `${JSON.stringify(deadLetters, null, 2)}\n`
        : formatDeadLetters(deadLetters);
    }
    case 'retry':
      return formatRetry(await retryDeadLetters(config, action.selection, warnings));
    case 'discard':
      return formatDiscard(await discardDeadLetters(config, action.selection, warnings));
  }
}
