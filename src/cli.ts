#!/usr/bin/env node
/**
 * The `pg2kafka` command line. Each command lives in `src/commands/<name>.ts` and exports
 * a function usable from code; this file only dispatches and maps failures to exit codes:
 * 0 success, 2 bad usage or configuration, 1 runtime failure.
 */
import { packageVersion } from './package-root.ts';

const HELP = `pg2kafka ${packageVersion}: stream PostgreSQL row changes to Apache Kafka

Usage: pg2kafka [command] [options]

Options:
  -h, --help     show this help
  -v, --version  print the version
`;

export function main(argv: string[]): number {
  const [first] = argv;
  if (first === undefined || first === '-h' || first === '--help' || first === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  if (first === '-v' || first === '--version') {
    process.stdout.write(`${packageVersion}\n`);
    return 0;
  }
  process.stderr.write(`pg2kafka: unknown command "${first}". Run pg2kafka --help for the list.\n`);
  return 2;
}

process.exitCode = main(process.argv.slice(2));
