/**
 * `npm run kafka`: starts the local test broker and keeps it running until stopped, for
 * trying pg2kafka by hand (`KAFKA_BROKERS=<printed address> pg2kafka relay`).
 * `npm run kafka -- resolve` only fetches the broker runtime into the cache.
 *
 * It stops (the JVM first, then its data folder is removed) on SIGINT, SIGTERM or SIGHUP,
 * and also when the process that started it exits. That second way is what makes
 * `kill <pid of npm>` work: npm passes the signal only to the shell it runs the script in
 * (`sh -c "tsx scripts/kafka.ts"`), which dies without passing it on, and tsx, this
 * process and the JVM would run on under init. So this process watches its launchers:
 * its parent and, while that was started by `npm run` (it has `npm_lifecycle_event` in
 * its environment), the parent's parent, up to npm itself. When one of them is gone, the
 * broker is stopped as on SIGTERM. Watching reads /proc (Linux); elsewhere only the
 * direct parent is watched.
 */
import { readFileSync } from 'node:fs';
import { KafkaBroker, resolveKafkaRuntime } from './kafka-broker.ts';

/** How often the launchers are looked at: the broker stops within this of npm exiting. */
const WATCH_INTERVAL_MS = 250;

interface Launcher {
  pid: number;
  /** Start time in clock ticks since boot: a reused pid is another process. */
  startTime: string;
}

/** Parent pid and start time from /proc/<pid>/stat; undefined when it is gone or a zombie. */
function procStat(pid: number): { ppid: number; startTime: string } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z' || fields[0] === 'X') return undefined;
    return { ppid: Number(fields[1]), startTime: fields[19] ?? '' };
  } catch {
    return undefined;
  }
}

function startedByNpmRun(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/environ`, 'latin1')
      .split('\0')
      .some((entry) => entry.startsWith('npm_lifecycle_event='));
  } catch {
    return false;
  }
}

/** The parent, and the chain up to npm when `npm run` started it (see the file comment). */
function launchers(): Launcher[] {
  const chain: Launcher[] = [];
  let pid = process.ppid;
  while (pid > 1) {
    const stat = procStat(pid);
    if (!stat) break;
    chain.push({ pid, startTime: stat.startTime });
    if (!startedByNpmRun(pid)) break;
    pid = stat.ppid;
  }
  return chain;
}

/** Resolves once one of the launchers has exited. */
function launcherExited(): { exited: Promise<string>; stop: () => void } {
  let timer: NodeJS.Timeout | undefined;
  const exited = new Promise<string>((resolve) => {
    if (process.platform === 'linux') {
      const watched = launchers();
      timer = setInterval(() => {
        const gone = watched.find((l) => procStat(l.pid)?.startTime !== l.startTime);
        if (gone) resolve(`process ${gone.pid}, which started this one, exited`);
      }, WATCH_INTERVAL_MS);
    } else {
      const parent = process.ppid;
      timer = setInterval(() => {
        if (process.ppid !== parent) resolve(`the parent process ${parent} exited`);
      }, WATCH_INTERVAL_MS);
    }
    timer.unref();
  });
  return {
    exited,
    stop: () => {
      clearInterval(timer);
    },
  };
}

function signalled(): Promise<string> {
  return new Promise((resolve) => {
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      process.once(signal, () => {
        resolve(signal);
      });
    }
  });
}

async function main(): Promise<void> {
  if (process.argv[2] === 'resolve') {
    const runtime = await resolveKafkaRuntime();
    process.stdout.write(
      `Kafka ${runtime.version} runtime in ${runtime.libDir} (${runtime.fromCache ? 'cached' : `resolved in ${runtime.resolveMs} ms`})\n`,
    );
    return;
  }
  // A launcher that is gone may have held the reading end of our output: never crash on it.
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
  const stopRequested = signalled();
  const watch = launcherExited();
  const broker = await KafkaBroker.start();
  process.stdout.write(
    `Kafka ${broker.runtime.version} is running. Use it with:\n  KAFKA_BROKERS=${broker.brokers}\nPress Ctrl-C to stop it (its data is removed); it also stops when npm is killed.\n`,
  );
  // The JVM's pipes keep this process alive while it waits.
  const reason = await Promise.race([stopRequested, watch.exited]);
  watch.stop();
  process.stderr.write(`stopping the Kafka broker: ${reason}\n`);
  await broker.destroy();
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
