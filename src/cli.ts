#!/usr/bin/env node
/**
 * The `pg2kafka` command line. Each command lives in `src/commands/<name>.ts` and exports
 * a function usable from code; this file parses arguments, loads `.env` (the real
 * environment wins), and maps failures to exit codes: 0 success, 2 bad usage or
 * configuration (UsageError and its kinds: a refused role or database, a missing
 * schema), 1 runtime failure (anything else, such as a host that does not answer).
 *
 * Start-up cost: this file imports only what parses arguments and configuration. A
 * command's module, and with it postgres.js, pino, kafkajs or node-pg-migrate, is loaded
 * with import() when that command runs; `--version` and `--help` load none of them, nor
 * dotenv.
 */
import { environmentHelp, parseConfig, redactUrl } from './config.ts';
import { UsageError } from './errors.ts';
import type { Logger } from './logger.ts';
import { packageVersion } from './package-root.ts';

export function helpText(): string {
  return `pg2kafka ${packageVersion}: stream PostgreSQL row changes to Apache Kafka

Usage: pg2kafka [command] [options]

Commands:
  relay                          ship queued events to Kafka (the default)
  migrate                        install or upgrade the pg2kafka schema
  setup <table> <column> [--full-row]
                                 start capturing a table, keyed by <column>
  teardown <table>               stop capturing a table
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

Exit codes: 0 success, 2 bad usage or configuration, 1 runtime failure.
`;
}

type Env = Record<string, string | undefined>;

function splitArgs(args: string[], flags: string[]): { positional: string[]; flags: Set<string> } {
  const positional: string[] = [];
  const seen = new Set<string>();
  for (const arg of args) {
    if (arg.startsWith('--')) {
      if (!flags.includes(arg)) throw new UsageError(`unknown option ${arg}`);
      seen.add(arg);
    } else positional.push(arg);
  }
  return { positional, flags: seen };
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
      const { positional, flags } = splitArgs(args, ['--full-row']);
      expectArgs('setup', positional, 2, '<table> <external-id-column>');
      const [table = '', column = ''] = positional;
      const config = parseConfig(env, { needsKafka: false });
      const { setupCommand } = await import('./commands/setup.ts');
      const result = await setupCommand(config, table, column, flags.has('--full-row'));
      printWarnings(result.warnings);
      process.stdout.write(
        result.changed
          ? `capturing ${result.table} (topic ${result.topic}): ${result.snapshotRows} existing row(s) queued as SNAPSHOT events\n`
          : `already capturing ${result.table} (topic ${result.topic}, key ${result.externalIdColumn}): nothing changed, nothing queued\n`,
      );
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
      return 0;
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
