/** Runs the relay as a real child process (`pg2kafka relay`), as a user or container would. */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { after, before } from 'node:test';
import { splitLines } from '../../scripts/kafka-broker.ts';
import { migrate } from '../../src/capture/migrate.ts';
import { deferred, waitFor, type Sql } from '../helpers.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

export class RelayProcess {
  readonly stdout: string[] = [];
  readonly logs: LogLine[] = [];
  readonly stderrText: string[] = [];
  private readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(env: Record<string, string>, args: string[] = ['relay']) {
    this.child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], {
      cwd: ROOT,
      env: { ...process.env, LOG_LEVEL: 'debug', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = deferred<{ code: number | null; signal: NodeJS.Signals | null }>();
    this.exited = exited.promise;
    this.child.once('exit', (code, signal) => {
      exited.resolve({ code, signal });
    });
    splitLines(this.child.stdout, (line) => this.stdout.push(line));
    splitLines(this.child.stderr, (line) => {
      this.stderrText.push(line);
      try {
        this.logs.push(JSON.parse(line) as LogLine);
      } catch {
        // not a log line (a usage error, a crash trace): kept in stderrText
      }
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Waits for a log line whose message includes `text` (and matches `where`). */
  async waitForLog(
    text: string,
    timeoutMs = 20_000,
    where: (line: LogLine) => boolean = () => true,
  ): Promise<LogLine> {
    return waitFor(
      `relay log "${text}"; last lines:\n${this.stderrText.slice(-10).join('\n')}`,
      () => this.logs.find((l) => l.msg.includes(text) && where(l)),
      timeoutMs,
    );
  }

  async stop(
    signal: NodeJS.Signals = 'SIGTERM',
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }

  kill(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.stop('SIGKILL');
  }
}

/** Runs a pg2kafka command to completion. */
export async function runCli(
  args: string[],
  env: Record<string, string | undefined>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  return { code, stdout, stderr };
}

/**
 * For relay test files: migrates the file's database before its tests, starts relays on
 * it (killed after the file if a test left one running), and reads the queue depth.
 */
export function useRelays(
  db: { url: string; sql: Sql; ready: Promise<void> },
  kafka: { brokers: string[] },
): { relay: (env?: Record<string, string>) => RelayProcess; queueDepth: () => Promise<number> } {
  const running: RelayProcess[] = [];
  before(async () => {
    await db.ready;
    await migrate({ databaseUrl: db.url });
  });
  after(async () => {
    await Promise.all(running.map((r) => r.kill()));
  });
  return {
    relay(env = {}) {
      const r = new RelayProcess({
        DATABASE_URL: db.url,
        KAFKA_BROKERS: kafka.brokers.join(','),
        ...env,
      });
      running.push(r);
      return r;
    },
    async queueDepth() {
      const [row] = await db.sql<
        { n: number }[]
      >`select count(*)::int as n from pg2kafka.captured_changes`;
      return row?.n ?? -1;
    },
  };
}
