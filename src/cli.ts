#!/usr/bin/env node
/**
 * The `pg2kafka` command line. Each command lives in `src/commands/<name>.ts` and exports
 * a function usable from code; this file parses arguments, loads `.env` (the real
 * environment wins), and maps failures to exit codes: 0 success, 2 bad usage or
 * configuration, 1 runtime failure.
 */
import { config as loadDotenv } from 'dotenv';
import {
  deadLettersCommand,
  deadLettersHelp,
  parseDeadLettersArgs,
} from './commands/dead-letters.ts';
import { migrateCommand, migrateHelp } from './commands/migrate.ts';
import { relayCommand, relayHelp } from './commands/relay.ts';
import { setupCommand, setupHelp, teardownCommand, teardownHelp } from './commands/setup.ts';
import { formatStatus, statusCommand, statusHelp } from './commands/status.ts';
import { environmentHelp, parseConfig, redactUrl } from './config.ts';
import { UsageError } from './errors.ts';
import { createLogger } from './logger.ts';
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

export async function main(argv: string[], env: Env): Promise<number> {
  const [first, ...rest] = argv;
  if (first === '-h' || first === '--help' || first === 'help') {
    process.stdout.write(helpText());
    return 0;
  }
  if (first === '-v' || first === '--version') {
    process.stdout.write(`${packageVersion}\n`);
    return 0;
  }
  const command = first ?? 'relay';
  const args = first === undefined ? [] : rest;
  const wantsHelp = args.includes('--help') || args.includes('-h');
  const helps: Record<string, string> = {
    relay: relayHelp,
    migrate: migrateHelp,
    setup: setupHelp,
    teardown: teardownHelp,
    status: statusHelp,
    'dead-letters': deadLettersHelp,
  };
  const help = helps[command];
  if (help === undefined)
    throw new UsageError(`unknown command "${command}". Run pg2kafka --help for the list.`);
  if (wantsHelp) {
    process.stdout.write(help);
    return 0;
  }

  switch (command) {
    case 'relay': {
      expectArgs('relay', splitArgs(args, []).positional, 0, 'no arguments');
      const config = parseConfig(env);
      return relayCommand(config, createLogger(config.logLevel));
    }
    case 'migrate': {
      expectArgs('migrate', splitArgs(args, []).positional, 0, 'no arguments');
      const config = parseConfig(env, { needsKafka: false });
      await migrateCommand(config.databaseUrl, createLogger(config.logLevel));
      return 0;
    }
    case 'setup': {
      const { positional, flags } = splitArgs(args, ['--full-row']);
      expectArgs('setup', positional, 2, '<table> <external-id-column>');
      const [table = '', column = ''] = positional;
      const config = parseConfig(env, { needsKafka: false });
      const result = await setupCommand(config, table, column, flags.has('--full-row'));
      for (const warning of result.warnings) process.stderr.write(`warning: ${warning}\n`);
      process.stdout.write(
        `capturing ${result.table} (topic ${result.topic}): ${result.snapshotRows} existing row(s) queued as SNAPSHOT events\n`,
      );
      return 0;
    }
    case 'teardown': {
      const { positional } = splitArgs(args, []);
      expectArgs('teardown', positional, 1, '<table>');
      const config = parseConfig(env, { needsKafka: false });
      const result = await teardownCommand(config, positional[0] ?? '');
      for (const warning of result.warnings) process.stderr.write(`warning: ${warning}\n`);
      if (result.warnings.length === 0)
        process.stdout.write(
          `stopped capturing ${result.table}; queued events will still be shipped\n`,
        );
      return 0;
    }
    case 'status': {
      const { positional, flags } = splitArgs(args, ['--json']);
      expectArgs('status', positional, 0, 'no arguments');
      const config = parseConfig(env, { needsKafka: false });
      const status = await statusCommand(config);
      process.stdout.write(
        flags.has('--json') ? `${JSON.stringify(status, null, 2)}\n` : formatStatus(status),
      );
      return 0;
    }
    case 'dead-letters': {
      const action = parseDeadLettersArgs(args);
      const config = parseConfig(env, { needsKafka: false });
      process.stdout.write(await deadLettersCommand(config, action));
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

/** An error message safe to print: a database URL it may contain loses its password. */
function safeMessage(error: unknown, env: Env): string {
  const message = error instanceof Error ? error.message : String(error);
  const url = env.DATABASE_URL;
  return url ? message.split(url).join(redactUrl(url)) : message;
}

loadDotenv({ quiet: true });
main(process.argv.slice(2), process.env).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    if (error instanceof UsageError) {
      process.stderr.write(`pg2kafka: ${error.problems.join('\npg2kafka: ')}\n`);
      process.exitCode = 2;
      return;
    }
    process.stderr.write(`pg2kafka: ${safeMessage(error, process.env)}\n`);
    process.exitCode = 1;
  },
);
