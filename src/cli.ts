#!/usr/bin/env node
/**
 * The `pg2kafka` command line. Each command lives in `src/commands/<name>.ts` and exports
 * a function usable from code; this file parses arguments, loads `.env` (the real
 * environment wins), and maps failures to exit codes: 0 success, 2 bad usage or
 * configuration (UsageError and its kinds: a refused role or database, a missing
 * schema), 1 runtime failure (anything else, such as a host that does not answer), and
 * 130 / 143 for a snapshot copy stopped by SIGINT / SIGTERM (its progress is kept).
 *
 * Start-up cost: this file imports only what parses arguments and configuration. A
 * command's module, and with it postgres.js, pino, kafkajs or node-pg-migrate, is loaded
 * with import() when that command runs; `--version` and `--help` load none of them, nor
 * dotenv.
 */
import { environmentHelp, parseConfig, redactUrl } from './config.ts';
import { UsageError } from './errors.ts';
import { MESSAGE_FORMATS } from './relay/debezium.ts';
import type { SchemaSetupEntry, SetupResult } from './commands/setup.ts';
import type { Logger } from './logger.ts';
import { packageVersion } from './package-root.ts';

export function helpText(): string {
  return `pg2kafka ${packageVersion}: stream PostgreSQL row changes to Apache Kafka

Usage: pg2kafka [command] [options]

Commands:
  relay                          ship queued events to Kafka (the default)
  migrate                        install or upgrade the pg2kafka schema
  setup <table> [<column>] [--full-row] [--snapshot=online|locked|none] [--background]
        [--exclude=<columns> | --include=<columns>] [--filter=<condition>] [--tombstones]
        [--format=pg2kafka|debezium|debezium-schemaless]
                                 start capturing a table, keyed by <column> (default:
                                 its primary key), and copy its existing rows;
                                 several tables, or '<schema>.*' for every table of a
                                 schema, each with its primary key
  alter <table> [--exclude=<columns> | --include=<columns>] [--filter=<condition>]
        [--tombstones | --no-tombstones] [--format=<format>]
                                 change what a captured table's events carry
  teardown <table>               stop capturing a table
  snapshot [<table>...] [--background]
                                 copy the pending online snapshots now
  snapshot --cancel <table>...   stop a table's online snapshot where it is
  resnapshot <table> [--where <condition>] [--background]
                                 queue a table's rows (or those matching) again
  status [--json]                tracked tables, queue depth, dead letters, active relay
  dead-letters [--json] [--table <table>]
                                 list the events Kafka refused for good
  dead-letters retry <id>... | --all
                                 put dead letters back in the queue (ahead of their key)
  dead-letters discard <id>... | --all
                                 drop dead letters for good

Options:
  -h, --help     show this help (pg2kafka <command> --help for a command's)
  -v, --version  print the version

Environment (also read from a .env file; the real environment wins):
${environmentHelp()}

Exit codes: 0 success, 2 bad usage or configuration, 1 runtime failure, 130 / 143 a
snapshot copy stopped by SIGINT / SIGTERM (its progress is kept).
`;
}

type Env = Record<string, string | undefined>;

/**
 * Positional arguments, the `flags` given, and the values of the `valued` options given
 * (`--where <value>` or `--where=<value>`).
 */
function splitArgs(
  args: string[],
  flags: string[],
  valued: string[] = [],
): { positional: string[]; flags: Set<string>; values: Map<string, string> } {
  const positional: string[] = [];
  const seen = new Set<string>();
  const values = new Map<string, string>();
  for (let i = 0; i < args.length; i += 1) {
    const arg = args[i] ?? '';
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = eq === -1 ? arg : arg.slice(0, eq);
      if (valued.includes(name)) {
        const value = eq === -1 ? args[(i += 1)] : arg.slice(eq + 1);
        if (value === undefined) throw new UsageError(`${name} needs a value`);
        if (values.has(name)) throw new UsageError(`${name} is given twice`);
        values.set(name, value);
        continue;
      }
      if (!flags.includes(arg)) throw new UsageError(`unknown option ${arg}`);
      seen.add(arg);
    } else positional.push(arg);
  }
  return { positional, flags: seen, values };
}

const PAYLOAD_VALUES = ['--exclude', '--include', '--filter', '--format'];

/** A column list option: names separated by commas ('' lifts the list, for alter). */
function columnList(name: string, value: string | undefined): string[] | undefined {
  if (value === undefined) return undefined;
  const columns = value === '' ? [] : value.split(',').map((c) => c.trim());
  if (columns.some((c) => c === '')) {
    throw new UsageError(
      `${name} takes column names separated by commas, as in ${name}=password_hash,ssn; got "${value}"`,
    );
  }
  return columns;
}

/** The payload settings of setup or alter from their options (undefined: not given). */
function payloadOptions(
  flags: Set<string>,
  values: Map<string, string>,
  command: 'setup' | 'alter',
): import('./commands/setup.ts').PayloadOptions {
  const exclude = columnList('--exclude', values.get('--exclude'));
  const include = columnList('--include', values.get('--include'));
  if ((exclude?.length ?? 0) > 0 && (include?.length ?? 0) > 0) {
    throw new UsageError(
      '--exclude and --include cannot be given together: --exclude keeps every column but those, --include only those (and the key)',
    );
  }
  if (command === 'setup' && (exclude?.length === 0 || include?.length === 0)) {
    throw new UsageError(
      '--exclude= and --include= need column names (an empty list is for alter)',
    );
  }
  if (flags.has('--tombstones') && flags.has('--no-tombstones')) {
    throw new UsageError('--tombstones and --no-tombstones cannot be given together');
  }
  const filter = values.get('--filter');
  if (command === 'setup' && filter !== undefined && filter.trim() === '') {
    throw new UsageError('--filter needs a condition, as in --filter="status <> \'draft\'"');
  }
  const format = values.get('--format');
  if (
    format !== undefined &&
    !(MESSAGE_FORMATS as readonly string[]).includes(format) &&
    (command === 'setup' || format !== '')
  ) {
    throw new UsageError(
      `--format must be one of ${MESSAGE_FORMATS.join(', ')}${command === 'alter' ? ' (or empty: follow MESSAGE_FORMAT)' : ''}, got "${format}"`,
    );
  }
  return {
    exclude,
    include,
    filter,
    format,
    tombstones: flags.has('--tombstones') ? true : flags.has('--no-tombstones') ? false : undefined,
  };
}

const SNAPSHOT_MODES = ['online', 'locked', 'none'] as const;

function snapshotMode(value: string | undefined): (typeof SNAPSHOT_MODES)[number] {
  if (value === undefined) return 'online';
  const mode = SNAPSHOT_MODES.find((m) => m === value);
  if (mode === undefined) {
    throw new UsageError(
      `--snapshot must be online, locked or none, not "${value}" (online copies a large table in chunks while its writers go on, locked at once under the table lock, none not at all)`,
    );
  }
  return mode;
}

function expectArgs(command: string, positional: string[], count: number, usage: string): void {
  if (positional.length !== count) {
    throw new UsageError(
      `pg2kafka ${command} expects ${usage}, got ${positional.length} argument(s)`,
    );
  }
}

const printWarnings = (warnings: string[]): void => {
  for (const warning of warnings) process.stderr.write(`warning: ${warning}\n`);
};

/** The line `pg2kafka setup` prints for a table set up (or already captured). */
function describeSetup(result: SetupResult): string {
  const topic = `${result.table} (topic ${result.topic}`;
  if (!result.changed) {
    return result.snapshot === 'pending'
      ? `already capturing ${topic}, key ${result.externalIdColumn}): nothing changed; its online snapshot is still pending`
      : `already capturing ${topic}, key ${result.externalIdColumn}): nothing changed, nothing queued`;
  }
  switch (result.snapshot) {
    case 'copied':
      return `capturing ${topic}): ${result.snapshotRows} existing row(s) queued as SNAPSHOT events`;
    case 'pending':
      return `capturing ${topic}): its existing rows${result.rowsEstimated === undefined ? '' : ` (about ${result.rowsEstimated})`} are queued as SNAPSHOT events online, in chunks`;
    case 'none':
      return `capturing ${topic}): its existing rows are not queued (--snapshot=none)`;
  }
}

const pendingOf = (results: SetupResult[]): Array<{ oid: string; table: string }> =>
  results.filter((r) => r.snapshot === 'pending').map((r) => ({ oid: r.tableOid, table: r.table }));

async function createLogger(level: string): Promise<Logger> {
  return (await import('./logger.ts')).createLogger(level);
}

interface Command {
  /** The command's --help text (loads its module). */
  help(): Promise<string>;
  /** Runs the command; resolves to its exit code. */
  run(args: string[], env: Env): Promise<number>;
}

/** Every command, loaded on demand. Arguments and configuration are checked before loading. */
const COMMANDS: Record<string, Command> = {
  relay: {
    help: async () => (await import('./commands/relay.ts')).relayHelp,
    run: async (args, env) => {
      expectArgs('relay', splitArgs(args, []).positional, 0, 'no arguments');
      const config = parseConfig(env);
      const { relayCommand } = await import('./commands/relay.ts');
      return relayCommand(config, await createLogger(config.logLevel));
    },
  },
  migrate: {
    help: async () => (await import('./commands/migrate.ts')).migrateHelp,
    run: async (args, env) => {
      expectArgs('migrate', splitArgs(args, []).positional, 0, 'no arguments');
      const config = parseConfig(env, { needsKafka: false });
      const { migrateCommand } = await import('./commands/migrate.ts');
      await migrateCommand(config.databaseUrl, await createLogger(config.logLevel));
      return 0;
    },
  },
  setup: {
    help: async () => (await import('./commands/setup.ts')).setupHelp,
    run: async (args, env) => {
      const { positional, flags, values } = splitArgs(
        args,
        ['--full-row', '--background', '--tombstones'],
        ['--snapshot', ...PAYLOAD_VALUES],
      );
      if (positional.length < 1) {
        throw new UsageError(
          `pg2kafka setup expects <table> [<external-id-column>], got ${positional.length} argument(s)`,
        );
      }
      const [table = '', second] = positional;
      const options = {
        fullRow: flags.has('--full-row'),
        snapshot: snapshotMode(values.get('--snapshot')),
        payload: payloadOptions(flags, values, 'setup'),
      };
      const background = flags.has('--background');
      const config = parseConfig(env, { needsKafka: false });
      const setup = await import('./commands/setup.ts');
      const { copyPendingCommand } = await import('./commands/snapshot.ts');
      const schema = setup.schemaPattern(table);
      if (
        schema !== undefined &&
        second !== undefined &&
        setup.schemaPattern(second) === undefined &&
        positional.length === 2
      ) {
        throw new UsageError(
          `pg2kafka setup ${table} sets up each table of schema ${schema} with its primary key: give no column`,
        );
      }
      const several =
        positional.length > 2 ||
        (second !== undefined &&
          (schema !== undefined ||
            setup.schemaPattern(second) !== undefined ||
            (await setup.secondArgumentIs(config, table, second)) === 'table'));
      if (schema === undefined && !several) {
        const result = await setup.setupCommand(config, table, { ...options, column: second });
        printWarnings(result.warnings);
        process.stdout.write(`${describeSetup(result)}\n`);
        return copyPendingCommand(config, pendingOf([result]), background);
      }
      let entries: SchemaSetupEntry[];
      let summary: string;
      if (schema !== undefined && !several) {
        const found = await setup.setupSchemaCommand(config, schema, options);
        printWarnings(found.warnings);
        if (found.entries.length === 0) {
          process.stdout.write(`schema ${found.schema} has no tables to set up\n`);
          return 0;
        }
        entries = found.entries;
        summary = `schema ${found.schema}`;
      } else {
        entries = [];
        const tables: string[] = [];
        const flush = async (): Promise<void> => {
          if (tables.length === 0) return;
          const named = await setup.setupTablesCommand(config, tables.splice(0), options);
          printWarnings(named.warnings);
          entries.push(...named.entries);
        };
        for (const target of positional) {
          const pattern = setup.schemaPattern(target);
          if (pattern === undefined) {
            tables.push(target);
            continue;
          }
          await flush();
          const found = await setup.setupSchemaCommand(config, pattern, options);
          printWarnings(found.warnings);
          entries.push(...found.entries);
        }
        await flush();
        summary = 'setup';
      }
      const results: SetupResult[] = [];
      let failed = 0;
      let skipped = 0;
      for (const entry of entries) {
        if (entry.outcome === 'set up') {
          printWarnings(entry.result.warnings);
          process.stdout.write(`${describeSetup(entry.result)}\n`);
          results.push(entry.result);
        } else if (entry.outcome === 'skipped') {
          skipped += 1;
          process.stdout.write(`skipped ${entry.table}: ${entry.reason}\n`);
        } else {
          failed += 1;
          const message = entry.error instanceof Error ? entry.error.message : String(entry.error);
          process.stderr.write(
            `pg2kafka: ${message.includes(entry.table) ? '' : `${entry.table}: `}${message}\n`,
          );
        }
      }
      const unchanged = results.filter((r) => !r.changed).length;
      process.stdout.write(
        `${summary}: ${results.length - unchanged} table(s) set up, ${unchanged} already captured, ${skipped} skipped, ${failed} failed\n`,
      );
      const code = await copyPendingCommand(config, pendingOf(results), background);
      return code !== 0 ? code : failed > 0 ? 1 : 0;
    },
  },
  alter: {
    help: async () => (await import('./commands/setup.ts')).alterHelp,
    run: async (args, env) => {
      const { positional, flags, values } = splitArgs(
        args,
        ['--tombstones', '--no-tombstones'],
        PAYLOAD_VALUES,
      );
      expectArgs('alter', positional, 1, '<table> and the settings to change');
      const payload = payloadOptions(flags, values, 'alter');
      if (Object.values(payload).every((v) => v === undefined)) {
        throw new UsageError(
          'pg2kafka alter needs a setting to change: --exclude, --include, --filter, --tombstones, --no-tombstones or --format',
        );
      }
      const config = parseConfig(env, { needsKafka: false });
      const { alterCommand } = await import('./commands/setup.ts');
      const result = await alterCommand(config, positional[0] ?? '', payload);
      printWarnings(result.warnings);
      process.stdout.write(
        `${result.table} is captured${result.settings || ' with every column, every row'}\n`,
      );
      if (result.hint) process.stdout.write(`  hint: ${result.hint}\n`);
      return 0;
    },
  },
  teardown: {
    help: async () => (await import('./commands/setup.ts')).teardownHelp,
    run: async (args, env) => {
      const { positional } = splitArgs(args, []);
      expectArgs('teardown', positional, 1, '<table>');
      const config = parseConfig(env, { needsKafka: false });
      const { teardownCommand } = await import('./commands/setup.ts');
      const result = await teardownCommand(config, positional[0] ?? '');
      printWarnings(result.warnings);
      if (result.changed)
        process.stdout.write(
          `stopped capturing ${result.table}; queued events will still be shipped\n`,
        );
      return 0;
    },
  },
  snapshot: {
    help: async () => (await import('./commands/snapshot.ts')).snapshotHelp,
    run: async (args, env) => {
      const { positional, flags } = splitArgs(args, ['--cancel', '--background']);
      const cancel = flags.has('--cancel');
      if (cancel && positional.length === 0) {
        throw new UsageError('pg2kafka snapshot --cancel expects <table>..., got 0 argument(s)');
      }
      if (cancel && flags.has('--background')) {
        throw new UsageError('pg2kafka snapshot takes --cancel or --background, not both');
      }
      const config = parseConfig(env, { needsKafka: false });
      const { snapshotCommand } = await import('./commands/snapshot.ts');
      return snapshotCommand(config, {
        tables: positional,
        cancel,
        background: flags.has('--background'),
      });
    },
  },
  resnapshot: {
    help: async () => (await import('./commands/snapshot.ts')).resnapshotHelp,
    run: async (args, env) => {
      const { positional, flags, values } = splitArgs(args, ['--background'], ['--where']);
      expectArgs('resnapshot', positional, 1, '<table>');
      const where = values.get('--where');
      if (where?.trim() === '') {
        throw new UsageError(
          '--where needs a SQL condition, as in --where "id <= 100" (leave it out to copy every row)',
        );
      }
      const config = parseConfig(env, { needsKafka: false });
      const { resnapshotCommand } = await import('./commands/snapshot.ts');
      return resnapshotCommand(config, positional[0] ?? '', {
        where,
        background: flags.has('--background'),
      });
    },
  },
  status: {
    help: async () => (await import('./commands/status.ts')).statusHelp,
    run: async (args, env) => {
      const { positional, flags } = splitArgs(args, ['--json']);
      expectArgs('status', positional, 0, 'no arguments');
      const config = parseConfig(env, { needsKafka: false });
      const { formatStatus, statusCommand } = await import('./commands/status.ts');
      const warnings: string[] = [];
      const status = await statusCommand(config, warnings);
      printWarnings(warnings);
      process.stdout.write(
        flags.has('--json') ? `${JSON.stringify(status, null, 2)}\n` : formatStatus(status),
      );
      // Something needs attention: exit 3, so that a script or a cron job notices.
      return status.attention.length > 0 ? 3 : 0;
    },
  },
  'dead-letters': {
    help: async () => (await import('./commands/dead-letters.ts')).deadLettersHelp,
    run: async (args, env) => {
      const { deadLettersCommand, parseDeadLettersArgs } =
        await import('./commands/dead-letters.ts');
      const action = parseDeadLettersArgs(args);
      const config = parseConfig(env, { needsKafka: false });
      const warnings: string[] = [];
      const output = await deadLettersCommand(config, action, warnings);
      printWarnings(warnings);
      process.stdout.write(output);
      return 0;
    },
  },
};

/**
 * Runs the command line `argv`. `loadEnvFile` is called once a command (not help or the
 * version) is about to read `env`.
 */
export async function main(
  argv: string[],
  env: Env,
  loadEnvFile: () => Promise<void> = () => Promise.resolve(),
): Promise<number> {
  const [first, ...rest] = argv;
  if (first === '-h' || first === '--help' || first === 'help') {
    process.stdout.write(helpText());
    return 0;
  }
  if (first === '-v' || first === '--version') {
    process.stdout.write(`${packageVersion}\n`);
    return 0;
  }
  const name = first ?? 'relay';
  const args = first === undefined ? [] : rest;
  const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (command === undefined)
    throw new UsageError(`unknown command "${name}". Run pg2kafka --help for the list.`);
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(await command.help());
    return 0;
  }
  await loadEnvFile();
  return command.run(args, env);
}

/** An error message safe to print: a database URL it may contain loses its password. */
function safeMessage(error: unknown, env: Env): string {
  const message = error instanceof Error ? error.message : String(error);
  const url = env.DATABASE_URL;
  return url ? message.split(url).join(redactUrl(url)) : message;
}

const loadDotenv = async (): Promise<void> => {
  (await import('dotenv')).config({ quiet: true });
};

main(process.argv.slice(2), process.env, loadDotenv).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    if (error instanceof UsageError) {
      const problems = error.problems.map((p) => safeMessage(new Error(p), process.env));
      process.stderr.write(`pg2kafka: ${problems.join('\npg2kafka: ')}\n`);
      process.exitCode = 2;
      return;
    }
    process.stderr.write(`pg2kafka: ${safeMessage(error, process.env)}\n`);
    process.exitCode = 1;
  },
);
