#!/usr/bin/env node
/**
 * The `pg2kafka` command line. Each command lives in `src/commands/<name>.ts` and exports
 * a function usable from code; this file parses the arguments, loads `.env`, and maps
 * failures to exit codes: 0 success, 2 bad usage or configuration, 1 runtime failure.
 */
import { config as loadDotenv } from 'dotenv';
import { migrateCommand, migrateHelp } from './commands/migrate.ts';
import { UsageError } from './errors.ts';
import { createLogger } from './logger.ts';
import { packageVersion } from './package-root.ts';

const HELP = `pg2kafka ${packageVersion}: stream PostgreSQL row changes to Apache Kafka

Usage: pg2kafka <command> [options]

Commands:
  migrate        install or upgrade the pg2kafka schema

Options:
  -h, --help     show this help (pg2kafka <command> --help for a command's)
  -v, --version  print the version

Environment (also read from a .env file; the real environment wins):
  DATABASE_URL   PostgreSQL connection URL (required)
  LOG_LEVEL      fatal, error, warn, info, debug or trace (default: info)
`;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

function requireDatabaseUrl(env: NodeJS.ProcessEnv): string {
  const url = env.DATABASE_URL;
  if (!url) {
    throw new UsageError(
      'DATABASE_URL is required (example: DATABASE_URL=postgres://user:password@127.0.0.1:5432/shop)',
    );
  }
  if (!/^postgres(ql)?:\/\//.test(url)) {
    throw new UsageError('DATABASE_URL must start with postgres:// or postgresql://');
  }
  return url;
}

function logLevel(env: NodeJS.ProcessEnv): string {
  const level = env.LOG_LEVEL ?? 'info';
  if (!LOG_LEVELS.includes(level)) {
    throw new UsageError(`LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}, got "${level}"`);
  }
  return level;
}

export async function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  if (command === '-v' || command === '--version') {
    process.stdout.write(`${packageVersion}\n`);
    return 0;
  }
  const wantsHelp = rest.includes('--help') || rest.includes('-h');
  switch (command) {
    case 'migrate': {
      if (wantsHelp) {
        process.stdout.write(migrateHelp);
        return 0;
      }
      if (rest.length > 0)
        throw new UsageError(`pg2kafka migrate takes no arguments, got "${rest.join(' ')}"`);
      const databaseUrl = requireDatabaseUrl(env);
      await migrateCommand(databaseUrl, createLogger(logLevel(env)));
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${command}". Run pg2kafka --help for the list.`);
  }
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
    process.stderr.write(`pg2kafka: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  },
);
