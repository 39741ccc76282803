/**
 * Debezium's message format: the change events of Debezium's PostgreSQL connector, as
 * Kafka Connect's JsonConverter writes them, so that consumers built for Debezium (its
 * JDBC sink, ExtractNewRecordState, Flink's debezium-json, ...) read pg2kafka's topics.
 *
 *   key    the table's key columns as a struct: {"sku": "A-1"}
 *   value  {"before", "after", "source", "transaction", "op", "ts_ms", "ts_us", "ts_ns"}
 *          op: r (snapshot), c (insert), u (update), d (delete), t (truncate)
 *
 * `debezium` embeds the Connect schema in both ({"schema": ..., "payload": ...}), which
 * Kafka Connect sinks need (JsonConverter with schemas.enable=true); `debezium-schemaless`
 * writes the payload alone. Values are converted the way the connector's defaults do
 * (decimal.handling.mode=precise, time.precision.mode=adaptive, binary.handling.mode=bytes),
 * from the row images' JSON text without parsing numbers: a bigint or a numeric keeps
 * every digit. The column types come from the catalog, cached per table (ColumnCatalog).
 *
 * Not mapped, and what it becomes: interval, money, geometric types, ranges,
 * bit strings, enums and composite types are strings (PostgreSQL's text, or the JSON
 * text of a composite); NaN and infinite numbers, infinite dates and timestamps are null
 * (Connect's types have no such values); a multidimensional array is null.
 */
import type postgres from 'postgres';
import { packageVersion } from '../package-root.ts';

export const MESSAGE_FORMATS = ['pg2kafka', 'debezium', 'debezium-schemaless'] as const;
export type MessageFormat = (typeof MESSAGE_FORMATS)[number];

/** How one column's value is written: its Connect schema and a converter of its JSON text. */
interface ColumnKind {
  /** The Connect schema of the field, without "optional" and "field". */
  schema: Record<string, unknown>;
  /** The value's JSON text in the row image to the JSON text of the Connect value. */
  convert: (raw: string) => string;
  /**
   * Some values have no Connect equivalent and become null (NaN, infinity): the field is
   * optional even for a NOT NULL column, or the consumer's converter would refuse it.
   */
  nullable?: true;
}

/** A column as the catalog describes it. */
interface CatalogColumn {
  tableOid: string;
  name: string;
  notNull: boolean;
  typeName: string;
  typeKind: string;
  elementName: string | null;
  typmod: number;
}

interface TableColumns {
  kinds: Map<string, ColumnKind>;
  notNull: Set<string>;
  /** The catalog rows it was built from, as text: a change replaces the entry. */
  signature: string;
  /** Distinguishes the entries a table had, for the schema cache. */
  version: number;
}

/** Connect's schemas of what the builder writes, per table and column set. */
interface TableSchemas {
  key: string;
  value: string;
}

/** One Debezium event to write. */
export interface DebeziumEvent {
  /** 'tombstone': only the key (of `before`), the value is null. */
  op: 'r' | 'c' | 'u' | 'd' | 't' | 'tombstone';
  before: string | null;
  after: string | null;
  /** The image that holds the key (null for a truncate). */
  keyImage: string | null;
}

/** The change fields the envelope needs. */
export interface DebeziumSource {
  tableOid: string;
  schemaName: string;
  tableName: string;
  database: string;
  keyColumns: string[];
  createdAtUs: string;
  txId: string | null;
}

const NULL = 'null';

/** Skips JSON whitespace from `i`. */
function skipSpace(text: string, i: number): number {
  let at = i;
  for (;;) {
    const c = text.charCodeAt(at);
    if (c !== 32 && c !== 9 && c !== 10 && c !== 13) return at;
    at++;
  }
}

/** The index just past the JSON string whose opening quote is at `i`. */
function stringEnd(text: string, i: number): number {
  let at = i + 1;
  for (;;) {
    const quote = text.indexOf('"', at);
    if (quote < 0) return text.length;
    // The quote ends the string unless an odd number of backslashes escapes it.
    let slashes = 0;
    while (text.charCodeAt(quote - 1 - slashes) === 92) slashes++;
    if (slashes % 2 === 0) return quote + 1;
    at = quote + 1;
  }
}

/** The index just past the JSON value starting at `i` (after whitespace). */
function valueEnd(text: string, i: number): number {
  const first = text.charCodeAt(i);
  if (first === 34) return stringEnd(text, i);
  let at = i;
  if (first === 123 || first === 91) {
    let depth = 0;
    for (; at < text.length; at++) {
      const c = text.charCodeAt(at);
      if (c === 34) at = stringEnd(text, at) - 1;
      else if (c === 123 || c === 91) depth++;
      else if (c === 125 || c === 93) {
        depth--;
        if (depth === 0) return at + 1;
      }
    }
    return at;
  }
  // A number, true, false or null: up to the next separator.
  for (; at < text.length; at++) {
    const c = text.charCodeAt(at);
    if (c === 44 || c === 93 || c === 125 || c === 32 || c === 9 || c === 10 || c === 13) break;
  }
  return at;
}

/**
 * The members of a JSON object as [name, value's JSON text], in order, without parsing
 * the values (numbers keep their digits).
 */
export function objectMembers(text: string): Array<[string, string]> {
  const members: Array<[string, string]> = [];
  let at = skipSpace(text, 0);
  if (text.charAt(at) !== '{') throw new Error('a row image is not a JSON object');
  at = skipSpace(text, at + 1);
  while (at < text.length && text.charAt(at) !== '}') {
    const nameEnd = valueEnd(text, at);
    const name = JSON.parse(text.slice(at, nameEnd)) as string;
    at = skipSpace(text, skipSpace(text, nameEnd) + 1); // past ':'
    const end = valueEnd(text, at);
    members.push([name, text.slice(at, end)]);
    at = skipSpace(text, end);
    if (text.charAt(at) === ',') at = skipSpace(text, at + 1);
  }
  return members;
}

/** The elements of a JSON array as JSON texts. */
function arrayElements(text: string): string[] {
  const elements: string[] = [];
  let at = skipSpace(text, 1);
  while (at < text.length && text.charAt(at) !== ']') {
    const end = valueEnd(text, at);
    elements.push(text.slice(at, end));
    at = skipSpace(text, end);
    if (text.charAt(at) === ',') at = skipSpace(text, at + 1);
  }
  return elements;
}

/** A JSON string's text as a JavaScript string; undefined if `raw` is not a string. */
function stringOf(raw: string): string | undefined {
  return raw.startsWith('"') ? (JSON.parse(raw) as string) : undefined;
}

/** The big-endian two's complement bytes of `n` (as Java's BigInteger.toByteArray), base64. */
function twosComplementBase64(n: bigint): string {
  let bytes = 1;
  while (n >= 1n << BigInt(8 * bytes - 1) || n < -(1n << BigInt(8 * bytes - 1))) bytes++;
  const unsigned = n < 0n ? (1n << BigInt(8 * bytes)) + n : n;
  return Buffer.from(unsigned.toString(16).padStart(2 * bytes, '0'), 'hex').toString('base64');
}

/** A numeric's text as its unscaled digits and scale; undefined for NaN or infinity. */
function decimalParts(raw: string): { unscaled: bigint; scale: number } | undefined {
  const match = /^(-?)(\d+)(?:\.(\d+))?$/.exec(raw);
  if (!match) return undefined;
  const [, sign = '', whole = '', fraction = ''] = match;
  return { unscaled: BigInt(`${sign}${whole}${fraction}`), scale: fraction.length };
}

/**
 * A numeric at a column's fixed scale (which may be negative). More digits than the scale
 * (an event queued before ALTER TABLE narrowed the column) are rounded half away from
 * zero, as PostgreSQL rounded the table's own values.
 */
function atScale(parts: { unscaled: bigint; scale: number }, scale: number): bigint {
  const shift = scale - parts.scale;
  if (shift >= 0) return parts.unscaled * 10n ** BigInt(shift);
  const divisor = 10n ** BigInt(-shift);
  const magnitude = parts.unscaled < 0n ? -parts.unscaled : parts.unscaled;
  const rounded = (magnitude + divisor / 2n) / divisor;
  return parts.unscaled < 0n ? -rounded : rounded;
}

const DATE_TIME = /^(\d{4,})-(\d\d)-(\d\d)(?:T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?)?( BC)?$/;

/**
 * Days from 1970-01-01 to a date of the proleptic Gregorian calendar (year 0 = 1 BC), by
 * arithmetic: JavaScript's Date ends in year 275760, PostgreSQL's dates in 5874897.
 */
function epochDays(year: number, month: number, day: number): number {
  const y = month <= 2 ? year - 1 : year;
  const era = Math.floor(y / 400);
  const yearOfEra = y - era * 400;
  const dayOfYear = Math.floor((153 * (month + (month > 2 ? -3 : 9)) + 2) / 5) + day - 1;
  const dayOfEra =
    yearOfEra * 365 + Math.floor(yearOfEra / 4) - Math.floor(yearOfEra / 100) + dayOfYear;
  return era * 146_097 + dayOfEra - 719_468;
}

/** Epoch microseconds of a date or a timestamp without zone, as JSON prints them. */
function epochMicros(text: string): bigint | undefined {
  const match = DATE_TIME.exec(text);
  if (!match) return undefined; // infinity
  const [, year, month, day, hours = '0', minutes = '0', seconds = '0', fraction = '', bc] = match;
  // 1 BC is year 0 of the proleptic Gregorian calendar that Java's java.time counts in.
  const days = epochDays(bc ? 1 - Number(year) : Number(year), Number(month), Number(day));
  const secondOfDay = (Number(hours) * 60 + Number(minutes)) * 60 + Number(seconds);
  return (
    (BigInt(days) * 86_400n + BigInt(secondOfDay)) * 1_000_000n + BigInt(fraction.padEnd(6, '0'))
  );
}

/** Epoch microseconds of a timestamp, if an int64 holds them (until year 294247). */
function timestampMicros(text: string): bigint | undefined {
  const micros = epochMicros(text);
  return micros === undefined || micros > INT64_MAX || micros < -INT64_MAX - 1n
    ? undefined
    : micros;
}

const INT64_MAX = 9_223_372_036_854_775_807n;

/**
 * A timestamptz as JSON prints it in UTC ("2026-12-03T10:00:00.5+00:00", "…+00:00 BC") as
 * ISO 8601 the way java.time parses it: "Z", a "+" before a year of five digits or more,
 * a signed astronomical year before year 1.
 */
function isoInstant(text: string): string | undefined {
  const match = /^(\d{4,})(-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?)\+00(?::00)?( BC)?$/.exec(text);
  if (!match) return undefined; // infinity
  const [, digitsOfYear = '', rest = '', bc] = match;
  const year = bc ? 1 - Number(digitsOfYear) : Number(digitsOfYear);
  const yearText =
    year < 0
      ? `-${String(-year).padStart(4, '0')}`
      : year > 9999
        ? `+${year}`
        : String(year).padStart(4, '0');
  return `${yearText}${rest}Z`;
}

/** Microseconds since midnight of a time of day ("24:00:00" included). */
function dayMicros(text: string): bigint | undefined {
  const match = /^(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?$/.exec(text);
  if (!match) return undefined;
  const [, hours, minutes, seconds, fraction = ''] = match;
  const wholeSeconds = (Number(hours) * 60 + Number(minutes)) * 60 + Number(seconds);
  return BigInt(wholeSeconds) * 1_000_000n + BigInt(fraction.padEnd(6, '0'));
}

/** A time with zone ("12:00:00.5+05:30") as the same instant in UTC ("06:30:00.5Z"). */
function utcTime(text: string): string | undefined {
  const match = /^(\d\d:\d\d:\d\d(?:\.\d{1,6})?)([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?$/.exec(text);
  if (!match) return undefined;
  const [, local = '', sign, hours, minutes = '0', seconds = '0'] = match;
  const micros = dayMicros(local);
  if (micros === undefined) return undefined;
  const offset = BigInt((Number(hours) * 60 + Number(minutes)) * 60 + Number(seconds)) * 1_000_000n;
  const day = 86_400_000_000n;
  const utc = (((sign === '+' ? micros - offset : micros + offset) % day) + day) % day;
  const wholeSeconds = Number(utc / 1_000_000n);
  const fraction = String(utc % 1_000_000n)
    .padStart(6, '0')
    .replace(/0+$/, '');
  const clock = [wholeSeconds / 3600, (wholeSeconds / 60) % 60, wholeSeconds % 60]
    .map((n) => String(Math.floor(n)).padStart(2, '0'))
    .join(':');
  return JSON.stringify(`${clock}${fraction === '' ? '' : `.${fraction}`}Z`);
}

/** A converter of a JSON string value; null for JSON null or what `f` cannot map. */
function fromString(f: (s: string) => string | undefined): (raw: string) => string {
  return (raw) => {
    const text = stringOf(raw);
    return text === undefined ? NULL : (f(text) ?? NULL);
  };
}

const passThrough = (raw: string): string => raw;

/** Any value as a Connect string: JSON strings pass, anything else becomes its JSON text. */
const asString = (raw: string): string =>
  raw === NULL || raw.startsWith('"') ? raw : JSON.stringify(raw);

/** A JSON number, or null for the strings PostgreSQL prints for NaN and infinities. */
const asNumber = (raw: string): string => (raw.startsWith('"') ? NULL : raw);

const precision = (typmod: number): number => (typmod < 0 ? 6 : typmod);

const STRING_KIND: ColumnKind = { schema: { type: 'string' }, convert: asString };

function named(type: string, name: string): Record<string, unknown> {
  return { type, name, version: 1 };
}

/**
 * A string of a PostgreSQL type that Debezium's JDBC sink creates as that type when told
 * (the parameters Debezium's connector adds under column.propagate.source.type): jsonb
 * rather than json, varchar(20) rather than text, inet rather than text.
 */
function sourceTyped(
  schema: Record<string, unknown>,
  sourceType: string,
  length?: number,
): Record<string, unknown> {
  const parameters: Record<string, string> = { '__debezium.source.column.type': sourceType };
  if (length !== undefined) parameters['__debezium.source.column.length'] = String(length);
  return { ...schema, parameters };
}

/** How a column of this type is written. */
function kindOf(typeName: string, typmod: number): ColumnKind {
  switch (typeName) {
    case 'int2':
      return { schema: { type: 'int16' }, convert: passThrough };
    case 'int4':
      return { schema: { type: 'int32' }, convert: passThrough };
    case 'int8':
    case 'oid':
      return { schema: { type: 'int64' }, convert: passThrough };
    case 'float4':
      return { schema: { type: 'float' }, convert: asNumber, nullable: true };
    case 'float8':
      return { schema: { type: 'double' }, convert: asNumber, nullable: true };
    case 'bool':
      return { schema: { type: 'boolean' }, convert: passThrough };
    case 'numeric': {
      if (typmod < 0) {
        return {
          schema: {
            type: 'struct',
            fields: [
              { type: 'int32', optional: false, field: 'scale' },
              { type: 'bytes', optional: false, field: 'value' },
            ],
            name: 'io.debezium.data.VariableScaleDecimal',
            version: 1,
            doc: 'Variable scaled decimal',
          },
          convert: (raw) => {
            const parts = decimalParts(raw);
            return parts === undefined
              ? NULL
              : `{"scale":${parts.scale},"value":"${twosComplementBase64(parts.unscaled)}"}`;
          },
          nullable: true,
        };
      }
      const digits = ((typmod - 4) >> 16) & 0xffff;
      const raw11 = (typmod - 4) & 0x7ff;
      const scale = raw11 > 1023 ? raw11 - 2048 : raw11;
      return {
        schema: {
          type: 'bytes',
          name: 'org.apache.kafka.connect.data.Decimal',
          version: 1,
          parameters: { scale: String(scale), 'connect.decimal.precision': String(digits) },
        },
        convert: (raw) => {
          const parts = decimalParts(raw);
          return parts === undefined ? NULL : `"${twosComplementBase64(atScale(parts, scale))}"`;
        },
        nullable: true,
      };
    }
    case 'date':
      return {
        schema: named('int32', 'io.debezium.time.Date'),
        convert: fromString((s) => {
          const micros = epochMicros(s);
          return micros === undefined ? undefined : String(micros / 86_400_000_000n);
        }),
        nullable: true,
      };
    case 'timestamp': {
      const millis = precision(typmod) <= 3;
      return {
        schema: named(
          'int64',
          millis ? 'io.debezium.time.Timestamp' : 'io.debezium.time.MicroTimestamp',
        ),
        convert: fromString((s) => {
          const micros = timestampMicros(s);
          if (micros === undefined) return undefined;
          return String(millis ? micros / 1000n : micros);
        }),
        nullable: true,
      };
    }
    case 'timestamptz':
      return {
        schema: named('string', 'io.debezium.time.ZonedTimestamp'),
        convert: fromString((s) => {
          const iso = isoInstant(s);
          return iso === undefined ? undefined : JSON.stringify(iso);
        }),
        nullable: true,
      };
    case 'time': {
      const millis = precision(typmod) <= 3;
      return {
        schema: named(
          millis ? 'int32' : 'int64',
          millis ? 'io.debezium.time.Time' : 'io.debezium.time.MicroTime',
        ),
        convert: fromString((s) => {
          const micros = dayMicros(s);
          if (micros === undefined) return undefined;
          return String(millis ? micros / 1000n : micros);
        }),
      };
    }
    case 'timetz':
      return {
        schema: named('string', 'io.debezium.time.ZonedTime'),
        convert: fromString(utcTime),
      };
    case 'bytea':
      return {
        schema: { type: 'bytes' },
        convert: fromString((s) => `"${Buffer.from(s.slice(2), 'hex').toString('base64')}"`),
      };
    case 'uuid':
      return {
        schema: sourceTyped(named('string', 'io.debezium.data.Uuid'), 'UUID'),
        convert: asString,
      };
    case 'varchar':
    case 'bpchar':
      return typmod < 0
        ? STRING_KIND
        : {
            schema: sourceTyped({ type: 'string' }, typeName.toUpperCase(), typmod - 4),
            convert: asString,
          };
    case 'inet':
    case 'cidr':
    case 'macaddr':
      return { schema: sourceTyped({ type: 'string' }, typeName.toUpperCase()), convert: asString };
    case 'json':
    case 'jsonb':
      return {
        schema: sourceTyped(named('string', 'io.debezium.data.Json'), typeName.toUpperCase()),
        convert: (raw) => (raw === NULL ? NULL : JSON.stringify(raw)),
      };
    case 'xml':
      return { schema: named('string', 'io.debezium.data.Xml'), convert: asString };
    default:
      return STRING_KIND;
  }
}

/** An array of `element`s; a multidimensional one (nested JSON arrays) is null. */
function arrayKind(element: ColumnKind, json: boolean): ColumnKind {
  return {
    schema: { type: 'array', items: { ...element.schema, optional: true } },
    nullable: true,
    convert: (raw) => {
      if (!raw.startsWith('[')) return NULL;
      const elements = arrayElements(raw);
      // A json element may itself be an array; any other nested array is a dimension.
      if (!json && elements.some((e) => e.startsWith('['))) return NULL;
      return `[${elements.map((e) => (e === NULL ? NULL : element.convert(e))).join(',')}]`;
    },
  };
}

function columnKind(column: CatalogColumn): ColumnKind {
  if (column.elementName !== null) {
    const json = column.elementName === 'json' || column.elementName === 'jsonb';
    return arrayKind(kindOf(column.elementName, column.typmod), json);
  }
  if (column.typeKind === 'e') return STRING_KIND;
  return kindOf(column.typeName, column.typmod);
}

/**
 * The column types of captured tables, read from the catalog with each batch that has
 * tables in a Debezium format (one small query): a type changed by ALTER TABLE is seen
 * by the next batch. A table's entry is replaced only when its columns changed, so the
 * schemas built from it stay cached; a dropped table keeps its last known columns.
 */
export class ColumnCatalog {
  private readonly tables = new Map<string, TableColumns>();

  constructor(private readonly sql: postgres.Sql) {}

  /** Reads the columns of `tableOids`. */
  async ensure(tableOids: string[]): Promise<void> {
    const oids = [...new Set(tableOids)];
    if (oids.length === 0) return;
    const rows = await this.sql<CatalogColumn[]>`
      select a.attrelid::int8::text as table_oid, a.attname::text as name, a.attnotnull as not_null,
             b.typname::text as type_name, b.typtype::text as type_kind,
             eb.typname::text as element_name,
             coalesce(nullif(a.atttypmod, -1), nullif(d1.typtypmod, -1), d2.typtypmod, -1) as typmod
      from pg_catalog.pg_attribute a
      -- a domain (of a domain) is written as its base type, an array of one as an array
      -- of the base type
      join pg_catalog.pg_type d1 on d1.oid = a.atttypid
      left join pg_catalog.pg_type d2 on d2.oid = d1.typbasetype and d1.typtype = 'd'
      join pg_catalog.pg_type b on b.oid = case when d2.typtype = 'd' then d2.typbasetype
                                                when d1.typtype = 'd' then d1.typbasetype
                                                else d1.oid end
      left join pg_catalog.pg_type e on e.oid = b.typelem and b.typcategory = 'A'
      left join pg_catalog.pg_type eb on eb.oid = case when e.typtype = 'd' then e.typbasetype else e.oid end
      where a.attrelid = any(${oids}::oid[]) and a.attnum > 0 and not a.attisdropped
      order by a.attrelid, a.attnum`;
    const read = new Map<string, CatalogColumn[]>();
    for (const row of rows) {
      const list = read.get(row.tableOid) ?? [];
      list.push(row);
      read.set(row.tableOid, list);
    }
    for (const [oid, columns] of read) {
      const signature = JSON.stringify(columns);
      if (this.tables.get(oid)?.signature === signature) continue;
      const table: TableColumns = {
        kinds: new Map(),
        notNull: new Set(),
        signature,
        version: ++this.version,
      };
      for (const column of columns) {
        table.kinds.set(column.name, columnKind(column));
        if (column.notNull) table.notNull.add(column.name);
      }
      this.tables.set(oid, table);
    }
  }

  private version = 0;

  /** A table's columns (none before ensure(), or for a table never seen). */
  columns(tableOid: string): TableColumns {
    return (
      this.tables.get(tableOid) ?? {
        kinds: new Map(),
        notNull: new Set(),
        signature: '',
        version: 0,
      }
    );
  }
}

/** The key columns of a row image, in the key's order (a missing one is null). */
function keyOf(image: Array<[string, string]>, source: DebeziumSource): Array<[string, string]> {
  const values = new Map(image);
  return source.keyColumns.map((name) => [name, values.get(name) ?? NULL]);
}

/** A struct's payload from a row image, each value converted for its column. */
function structOf(table: TableColumns, members: Array<[string, string]>): string {
  const fields = members.map(
    ([name, raw]) =>
      `${JSON.stringify(name)}:${(table.kinds.get(name) ?? STRING_KIND).convert(raw)}`,
  );
  return `{${fields.join(',')}}`;
}

function fieldSchemas(
  table: TableColumns,
  names: string[],
  optional: (name: string) => boolean,
): Array<Record<string, unknown>> {
  return names.map((name) => {
    const kind = table.kinds.get(name) ?? STRING_KIND;
    return { ...kind.schema, optional: optional(name) || kind.nullable === true, field: name };
  });
}

/** The fields of Debezium's PostgreSQL Source block, in its order. */
const SOURCE_SCHEMA = {
  type: 'struct',
  fields: [
    { type: 'string', optional: false, field: 'version' },
    { type: 'string', optional: false, field: 'connector' },
    { type: 'string', optional: false, field: 'name' },
    { type: 'int64', optional: false, field: 'ts_ms' },
    {
      type: 'string',
      optional: true,
      name: 'io.debezium.data.Enum',
      version: 1,
      parameters: {
        allowed:
          'true,first,first_in_data_collection,last_in_data_collection,last,false,incremental',
      },
      default: 'false',
      field: 'snapshot',
    },
    { type: 'string', optional: false, field: 'db' },
    { type: 'string', optional: true, field: 'sequence' },
    { type: 'int64', optional: true, field: 'ts_us' },
    { type: 'int64', optional: true, field: 'ts_ns' },
    { type: 'string', optional: false, field: 'schema' },
    { type: 'string', optional: false, field: 'table' },
    { type: 'int64', optional: true, field: 'txId' },
    { type: 'int64', optional: true, field: 'lsn' },
    { type: 'int64', optional: true, field: 'xmin' },
  ],
  optional: false,
  name: 'io.debezium.connector.postgresql.Source',
  version: 1,
  field: 'source',
};

const TRANSACTION_SCHEMA = {
  type: 'struct',
  fields: [
    { type: 'string', optional: false, field: 'id' },
    { type: 'int64', optional: false, field: 'total_order' },
    { type: 'int64', optional: false, field: 'data_collection_order' },
  ],
  optional: true,
  name: 'event.block',
  version: 1,
  field: 'transaction',
};

/**
 * Writes events in Debezium's format. Keeps the schemas it built, per table and set of
 * columns, as JSON text: the schema is most of an embedded-schema message, and a batch's
 * events of one table share it.
 */
export class DebeziumWriter {
  private readonly schemas = new Map<string, TableSchemas>();
  /** The columns of each table's last row written, for a truncate's schema. */
  private readonly lastColumns = new Map<string, string[]>();

  constructor(
    readonly catalog: ColumnCatalog,
    private readonly topicPrefix: string,
  ) {}

  /** The message key and value of `event`; key null for a truncate, value for a tombstone. */
  write(
    format: 'debezium' | 'debezium-schemaless',
    source: DebeziumSource,
    event: DebeziumEvent,
    snapshot: boolean,
  ): { key: string | null; value: string | null } {
    const table = this.catalog.columns(source.tableOid);
    const before = event.before === null ? undefined : objectMembers(event.before);
    const after = event.after === null ? undefined : objectMembers(event.after);
    // The key image is one of the two (after, or before for a delete): parsed once.
    const keyImage =
      event.keyImage === null
        ? undefined
        : event.keyImage === event.after
          ? after
          : event.keyImage === event.before
            ? before
            : objectMembers(event.keyImage);
    const keyMembers = keyImage === undefined ? undefined : keyOf(keyImage, source);
    if (event.op === 'tombstone') {
      const keyPayload = keyMembers === undefined ? null : structOf(table, keyMembers);
      if (format === 'debezium-schemaless' || keyPayload === null) {
        return { key: keyPayload, value: null };
      }
      // The DELETE's schemas (the same image), cached by its event just before.
      const { key } = this.schemasOf(source, table, before, undefined);
      return { key: `{"schema":${key},"payload":${keyPayload}}`, value: null };
    }
    const payload = this.envelope(source, {
      op: event.op,
      before: before === undefined ? NULL : structOf(table, before),
      after: after === undefined ? NULL : structOf(table, after),
      snapshot,
    });
    const keyPayload = keyMembers === undefined ? null : structOf(table, keyMembers);
    if (format === 'debezium-schemaless') return { key: keyPayload, value: payload };
    const schemas = this.schemasOf(source, table, before, after);
    return {
      key: keyPayload === null ? null : `{"schema":${schemas.key},"payload":${keyPayload}}`,
      value: `{"schema":${schemas.value},"payload":${payload}}`,
    };
  }

  private envelope(
    source: DebeziumSource,
    e: { op: string; before: string; after: string; snapshot: boolean },
  ): string {
    const us = source.createdAtUs;
    const nowUs = String(Date.now() * 1000);
    const block =
      `{"version":"${packageVersion}","connector":"pg2kafka","name":${JSON.stringify(this.topicPrefix)},` +
      `"ts_ms":${us.slice(0, -3) || '0'},"snapshot":"${e.snapshot ? 'true' : 'false'}",` +
      `"db":${JSON.stringify(source.database)},"sequence":null,"ts_us":${us},"ts_ns":${us}000,` +
      `"schema":${JSON.stringify(source.schemaName)},"table":${JSON.stringify(source.tableName)},` +
      `"txId":${source.txId ?? NULL},"lsn":null,"xmin":null}`;
    return (
      `{"before":${e.before},"after":${e.after},"source":${block},"transaction":null,` +
      `"op":"${e.op}","ts_ms":${nowUs.slice(0, -3)},"ts_us":${nowUs},"ts_ns":${nowUs}000}`
    );
  }

  /**
   * The key and envelope schemas for these images. Both images share the value schema: a
   * column only one of them has (the table changed between) is optional.
   */
  private schemasOf(
    source: DebeziumSource,
    table: TableColumns,
    before: Array<[string, string]> | undefined,
    after: Array<[string, string]> | undefined,
  ): TableSchemas {
    const beforeNames = before?.map(([name]) => name) ?? [];
    const afterNames = after?.map(([name]) => name) ?? [];
    let names = [...afterNames, ...beforeNames.filter((n) => !afterNames.includes(n))];
    // A truncate has no row: its schema is the table's, as the last row showed it (the
    // key columns before any), not an empty struct under the same record name.
    if (before === undefined && after === undefined) {
      names = this.lastColumns.get(source.tableOid) ?? source.keyColumns;
    } else {
      this.lastColumns.set(source.tableOid, names);
    }
    const partial =
      before !== undefined && after !== undefined
        ? names.filter((n) => !beforeNames.includes(n) || !afterNames.includes(n))
        : [];
    const cacheKey = [
      source.tableOid,
      source.schemaName,
      source.tableName,
      table.version,
      names.join('\u0001'),
      partial.join('\u0001'),
      source.keyColumns.join('\u0001'),
    ].join('\u0000');
    const cached = this.schemas.get(cacheKey);
    if (cached !== undefined) return cached;
    const record = `${this.topicPrefix}.${source.schemaName}.${source.tableName}`;
    const optional = (name: string): boolean => !table.notNull.has(name) || partial.includes(name);
    const row = (field: string): Record<string, unknown> => ({
      type: 'struct',
      fields: fieldSchemas(table, names, optional),
      optional: true,
      name: `${record}.Value`,
      field,
    });
    const keyNames = source.keyColumns;
    const schemas: TableSchemas = {
      key: JSON.stringify({
        type: 'struct',
        fields: fieldSchemas(table, keyNames, (name) => !table.notNull.has(name)),
        optional: false,
        name: `${record}.Key`,
      }),
      value: JSON.stringify({
        type: 'struct',
        fields: [
          row('before'),
          row('after'),
          SOURCE_SCHEMA,
          TRANSACTION_SCHEMA,
          { type: 'string', optional: false, field: 'op' },
          { type: 'int64', optional: true, field: 'ts_ms' },
          { type: 'int64', optional: true, field: 'ts_us' },
          { type: 'int64', optional: true, field: 'ts_ns' },
        ],
        optional: false,
        name: `${record}.Envelope`,
        version: 2,
      }),
    };
    if (this.schemas.size > 1000) this.schemas.clear();
    this.schemas.set(cacheKey, schemas);
    return schemas;
  }
}
