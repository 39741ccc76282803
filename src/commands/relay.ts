/**
 * `pg2kafka relay`: runs the relay until SIGTERM/SIGINT.
 *
 * Start: the database must answer and hold this version's schema before anything else
 * (PERFORM_MIGRATIONS=true installs it first). A server that refuses the login or the
 * database, or a missing schema, exits 2 with what to change; an unreachable server is
 * waited for with the common backoff.
 *
 * Shutdown is layered: the first signal stops fetching and the listener, and lets the
 * batch in flight finish (an unacked batch simply stays queued), then the lease is
 * released (waiting only briefly for a database that is down), Kafka and PostgreSQL
 * disconnected, exit 0. A watchdog (unref'd) exits 1 if that takes longer than
 * SHUTDOWN_TIMEOUT_MS; a second signal exits 1 at once.
 */
import type postgres from 'postgres';
import { migrate } from '../capture/migrate.ts';
import { warnStaleTriggers } from './migrate.ts';
import { checkSchema, isMissingObjectError, SchemaError } from '../capture/schema.ts';
import { describeConfig, type Config } from '../config.ts';
import {
  checkConnection,
  DatabaseRefusedError,
  explainConnectionError,
  isRefusedConnection,
  openPool,
  stopReconnecting,
} from '../database.ts';
import { isTransientDatabaseError, UsageError } from '../errors.ts';
import { DryRunSink } from '../kafka/dry-run-sink.ts';
import { createKafka, KafkajsSink } from '../kafka/kafkajs-sink.ts';
import type { EventSink } from '../kafka/sink.ts';
import type { Logger } from '../logger.ts';
import { backoffDelay } from '../relay/backoff.ts';
import { DeadLetterStore } from '../relay/dead-letters.ts';
import { IdleFlag, REFUSED_RETRY_MS, startListener } from '../relay/listener.ts';
import { EventQueue } from '../relay/queue.ts';
import { Relay, type RelayEvent } from '../relay/relay.ts';
import { VacuumWatch, type VacuumWatchOptions } from '../relay/vacuum-watch.ts';
import { SnapshotRunner, type SnapshotRunnerOptions } from '../relay/snapshots.ts';
import { within } from '../relay/within.ts';
import { Endpoints } from '../ops/http.ts';
import { readQueue, RelayMetrics } from '../ops/metrics.ts';
import { readStatus } from './status.ts';

export const SHUTDOWN_TIMEOUT_MS = 10_000;
/** How long shutdown waits for the loop's batch in flight before closing under it. */
const STOP_LOOP_WAIT_MS = 5_000;

export const relayHelp = `Usage: pg2kafka relay

Ships the events queued by pg2kafka.setup()'s triggers to Kafka (or, with DRY_RUN=true,
prints them on stdout) until stopped with SIGTERM or SIGINT. One relay per database is
active; others started on the same database wait as standbys and take over when it stops
or dies. Configuration comes from the environment (see pg2kafka --help).
`;

/** The wait before the loop retries after finding the schema missing (a person must migrate). */
const SCHEMA_RETRY_MS = 10_000;

/** Session settings of the relay's connections: event text never depends on the server's defaults. */
const SESSION_SETTINGS = {
  application_name: 'pg2kafka relay',
  TimeZone: 'UTC',
  DateStyle: 'ISO, YMD',
  IntervalStyle: 'postgres',
  extra_float_digits: '1',
  bytea_output: 'hex',
  // The fetch's LIMIT and skip list are parameters: a generic plan guesses them and may
  // scan the whole queue; a custom plan walks the primary key (measured: 98 -> 58 ms per
  // 1000 events with 200k queued).
  plan_cache_mode: 'force_custom_plan',
  // A half-open connection must not hang the loop: statements fail and are retried.
  statement_timeout: 60_000,
};

function logRelayEvents(relay: Relay, logger: Logger): void {
  relay.on((event: RelayEvent) => {
    switch (event.type) {
      case 'leadership':
        logger.info(
          { active: event.active, epoch: event.epoch, reason: event.reason },
          event.active ? 'active: shipping events' : 'not active',
        );
        break;
      case 'batch':
        logger.debug(
          {
            events: event.events,
            changes: event.changes,
            topics: event.topics,
            ms: event.ms,
            oldestAgeMs: event.oldestAgeMs,
            fetchMs: event.fetchMs,
          },
          'batch shipped',
        );
        break;
      case 'error':
        // What only a person can fix (a refused login, a missing schema) is an error.
        logger[event.error instanceof UsageError ? 'error' : 'warn'](
          {
            stage: event.stage,
            attempt: event.attempt,
            retryInMs: event.retryInMs,
            err: event.error,
          },
          `${event.stage === 'floor' ? 'cannot raise the queue floor (shipping goes on)' : 'cannot ship events now'}, retrying in ${event.retryInMs} ms: ${event.error instanceof Error ? event.error.message : String(event.error)}`,
        );
        break;
      case 'topic-held':
        // A retriable hold (no leader, a broker restarting) waits itself out: a warning.
        logger[event.retriable ? 'warn' : 'error'](
          { topic: event.topic, tables: event.tables, retryInMs: event.retryInMs },
          `events of ${event.tables.join(', ')} stay queued: ${event.reason}`,
        );
        break;
      case 'topic-released':
        // The retry's outcome is what matters (one line then, if it fails again).
        logger.debug(
          { topic: event.topic, tables: event.tables },
          'retrying the events of a topic that was held back',
        );
        break;
      case 'dead-letter': {
        const { entry } = event;
        logger.error(
          {
            id: entry.id,
            table: `${entry.schemaName}.${entry.tableName}`,
            topic: entry.topic,
            key: entry.externalId,
            errorCode: entry.errorCode,
            parked: entry.parked,
          },
          `event set aside as a dead letter: ${entry.reason} (list them with pg2kafka dead-letters)`,
        );
        break;
      }
      case 'yielded': {
        const seconds = (ms: number): string => `${Math.round(ms / 1000)} s`;
        logger.warn(
          { failingForMs: event.failingForMs, standBackMs: event.standBackMs, err: event.error },
          `nothing shipped for ${seconds(event.failingForMs)}: giving the lease up for ${seconds(event.standBackMs)} so that another relay can try (last error: ${event.error instanceof Error ? event.error.message : String(event.error)})`,
        );
        break;
      }
      case 'delivered-before':
        logger.info(
          { deleted: event.deleted },
          `exactly-once: ${event.deleted} change(s) the last committed transaction delivered were still queued (a relay stopped between commit and delete): deleted, not sent again`,
        );
        break;
      case 'stopped':
        logger.info('relay stopped');
        break;
    }
  });
}

/** How often the relay logs what it shipped, while events flow. */
export const FLOW_LOG_MS = 30_000;

/**
 * One info line every `everyMs` while events flow: events shipped since the last line, the
 * rate, the lag from capture to acknowledgement (mean and largest), the queue's depth.
 * Nothing while idle; retries keep their own one line each.
 */
function logFlow(relay: Relay, logger: Logger, sql: postgres.Sql, everyMs: number): void {
  let since = performance.now();
  let events = 0;
  let lagSumMs = 0;
  let lagMaxMs = 0;
  relay.on((event) => {
    if (event.type !== 'batch' || event.events === 0) return;
    events += event.events;
    for (const lag of event.lagsMs) {
      lagSumMs += lag;
      lagMaxMs = Math.max(lagMaxMs, lag);
    }
    const seconds = (performance.now() - since) / 1000;
    if (seconds * 1000 < everyMs) return;
    const line = {
      events,
      seconds: Math.round(seconds * 10) / 10,
      perSecond: Math.round(events / Math.max(seconds, 0.001)),
      lagMeanMs: Math.round(lagSumMs / Math.max(events, 1)),
      lagMaxMs: Math.round(lagMaxMs),
    };
    since = performance.now();
    events = 0;
    lagSumMs = 0;
    lagMaxMs = 0;
    void readQueue(sql)
      .then(
        (queue) => queue.events,
        () => undefined,
      )
      .then((queued) => {
        logger.info(
          { ...line, queued },
          `shipped ${line.events} events in ${line.seconds} s (${line.perSecond}/s), lag ${line.lagMeanMs} ms mean, ${line.lagMaxMs} ms most; ${queued === undefined ? 'queue depth unknown' : `${queued} queued`}`,
        );
      });
  });
}

/** A sleep that stop() cuts short. */
class StopSignal {
  requested = false;
  private wakers = new Set<() => void>();

  request(): void {
    this.requested = true;
    for (const wake of this.wakers) wake();
  }

  /** True once `promise` settled without error, false if stop() came first; throws its error. */
  async unless(promise: Promise<unknown>): Promise<boolean> {
    if (this.requested) return false;
    // Stopped first, the promise settles later with nobody waiting for it.
    promise.catch(() => undefined);
    let wake: (() => void) | undefined;
    const stopped = new Promise<false>((resolve) => {
      wake = () => {
        resolve(false);
      };
      this.wakers.add(wake);
    });
    try {
      return await Promise.race([promise.then(() => true), stopped]);
    } finally {
      if (wake) this.wakers.delete(wake);
    }
  }

  sleep(ms: number): Promise<void> {
    if (this.requested) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakers.add(done);
    });
  }
}

/**
 * Before the relay starts: waits (with the common backoff) until the database answers,
 * migrates if asked to, and checks the schema. Throws DatabaseRefusedError or
 * SchemaError (exit 2) for what waiting cannot fix. False when stopped meanwhile.
 */
async function prepareDatabase(config: Config, logger: Logger, stop: StopSignal): Promise<boolean> {
  for (let attempt = 1; !stop.requested; attempt += 1) {
    const sql = openPool(config.databaseUrl);
    try {
      // SIGTERM while the server has not answered yet stops at once (sql.end below).
      if (!(await stop.unless(checkConnection(sql, config.databaseUrl)))) return false;
      if (config.performMigrations) {
        const result = await migrate({
          databaseUrl: config.databaseUrl,
          log: (m) => {
            logger.debug(m);
          },
        });
        logger.info(result, 'schema pg2kafka migrated');
        warnStaleTriggers(result, logger);
      }
      const { warnings } = await checkSchema(sql);
      for (const warning of warnings) logger.warn(warning);
      return true;
    } catch (caught) {
      const error = explainConnectionError(caught, config.databaseUrl);
      if (!isTransientDatabaseError(caught) || error instanceof DatabaseRefusedError) throw error;
      const retryInMs = backoffDelay(attempt);
      logger.warn(
        { attempt, retryInMs, err: error },
        `cannot start yet, retrying in ${retryInMs} ms: ${error instanceof Error ? error.message : String(error)}`,
      );
      await stop.sleep(retryInMs);
    } finally {
      await sql.end({ timeout: 1 });
    }
  }
  return false;
}

/**
 * What a loop error means for the user: a refused login and a missing schema are said
 * plainly and retried slowly (a person must act); anything else is left as it is.
 */
function diagnoser(
  config: Config,
  sql: postgres.Sql,
): (error: unknown) => Promise<{ error: unknown; retryInMs?: number }> {
  return async (error) => {
    if (isRefusedConnection(error)) {
      return {
        error: explainConnectionError(error, config.databaseUrl),
        retryInMs: REFUSED_RETRY_MS,
      };
    }
    if (isMissingObjectError(error)) {
      try {
        await checkSchema(sql);
      } catch (problem) {
        if (problem instanceof SchemaError) return { error: problem, retryInMs: SCHEMA_RETRY_MS };
      }
    }
    return { error };
  };
}

/**
 * The HTTP endpoints (src/ops/http.ts) on HTTP_PORT, from the start (they answer
 * "starting" until the relay is attached). A port in use stops the start (exit 2) when
 * HTTP_PORT was set: a probe pointed at it would be answered by something else. The
 * default port in use (a second relay on the host, DRY_RUN beside the active relay) is
 * a warning, and the relay runs without endpoints.
 */
async function openEndpoints(config: Config, log: Logger): Promise<Endpoints | undefined> {
  if (config.httpPort === undefined) return undefined;
  const endpoints = new Endpoints();
  try {
    const port = await endpoints.listen(config.httpPort, config.httpHost);
    const where =
      config.httpHost === undefined ? `port ${port}` : `${config.httpHost} port ${port}`;
    log.info(
      { port, host: config.httpHost },
      `HTTP endpoints on ${where}: /healthz /readyz /metrics /status`,
    );
    return endpoints;
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    const why = error instanceof Error ? error.message : String(error);
    const what =
      code === 'EADDRINUSE'
        ? 'another process listens on it; set HTTP_PORT to a free port, or HTTP_PORT=off'
        : config.httpHost === undefined
          ? 'set HTTP_PORT to a port this process may listen on, or HTTP_PORT=off'
          : 'set HTTP_HOST to an address of this host (or leave it unset for every interface), and HTTP_PORT to a port this process may listen on';
    if (config.httpPortSet || config.httpHost !== undefined) {
      const on = config.httpHost === undefined ? '' : ` on HTTP_HOST ${config.httpHost}`;
      throw new UsageError(`cannot serve HTTP_PORT ${config.httpPort}${on} (${why}): ${what}`);
    }
    log.warn(
      { port: config.httpPort, err: error },
      `no HTTP endpoints: cannot serve the default port ${config.httpPort} (${why}); ${what}`,
    );
    return undefined;
  }
}

/** Hands the running relay to the endpoints, with a small pool of their own. */
function attachEndpoints(
  endpoints: Endpoints | undefined,
  config: Config,
  parts: { relay: Relay; sink: EventSink },
): void {
  if (!endpoints) return;
  const sql = openPool(config.databaseUrl, {
    // Two: a /status read (a count of the whole queue) never makes a probe wait.
    max: 2,
    idleTimeoutS: 60,
    // A scrape or a probe never waits long on a slow database.
    connection: { application_name: 'pg2kafka relay endpoints', statement_timeout: 2_000 },
  });
  endpoints.attach({
    ...parts,
    sql,
    metrics: new RelayMetrics(parts.relay, sql),
    status: () => readStatus(sql),
  });
}

/** The sink KAFKA_CLIENT names (stdout with DRY_RUN); says which in the log. */
async function openSink(config: Config, log: Logger): Promise<EventSink> {
  if (config.dryRun) return new DryRunSink();
  const kafkaLog = log.child({ component: 'kafka' });
  if (config.kafkaClient === 'rdkafka') {
    const { RdkafkaSink, loadRdkafka } = await import('../kafka/rdkafka-sink.ts');
    log.info(
      { kafkaClient: 'rdkafka', librdkafka: loadRdkafka().librdkafkaVersion },
      `producing with librdkafka ${loadRdkafka().librdkafkaVersion}`,
    );
    return new RdkafkaSink(config, kafkaLog, log.child({ component: 'librdkafka' }));
  }
  log.info({ kafkaClient: 'kafkajs' }, 'producing with kafkajs');
  return new KafkajsSink(createKafka(config, log), config, kafkaLog);
}

export interface RunningRelay {
  relay: Relay;
  /** Stops the relay and closes its connections. */
  shutdown(): Promise<void>;
  /** Settles when the relay has stopped. */
  done: Promise<void>;
}

/** Starts a relay from configuration; usable from code and tests. Undefined if stopped while starting. */
export async function startRelay(
  config: Config,
  logger: Logger,
  options: {
    /** Where events go instead of the configured Kafka client (the benchmark's discard sink). */
    sink?: EventSink;
    /** Stops a start that is still waiting for the database. */
    stop?: StopSignal;
    /** When to warn about a transaction holding vacuum back (tests shorten it). */
    vacuumWatch?: VacuumWatchOptions;
    /** Chunk size and pacing of the online snapshots (tests and the benchmark). */
    snapshots?: SnapshotRunnerOptions;
    /** How often the flow line is logged (FLOW_LOG_MS; tests shorten it). */
    flowLogEveryMs?: number;
  } = {},
): Promise<RunningRelay | undefined> {
  const log = logger.child({ component: 'relay' });
  log.info({ config: describeConfig(config) }, 'pg2kafka relay starting');
  if (config.tls && !config.tls.rejectUnauthorized) {
    log.warn('KAFKA_TLS_REJECT_UNAUTHORIZED=false: broker certificates are NOT verified');
  }
  const stop = options.stop ?? new StopSignal();
  const endpoints = await openEndpoints(config, log);
  const started = await prepareDatabase(config, log, stop).catch(async (error: unknown) => {
    await within(1_000, endpoints?.close());
    throw error;
  });
  if (!started) {
    await within(1_000, endpoints?.close());
    return undefined;
  }

  const sink: EventSink =
    options.sink ??
    (await openSink(config, log).catch(async (error: unknown) => {
      await within(1_000, endpoints?.close());
      throw error;
    }));
  const sql = openPool(config.databaseUrl, {
    max: 3,
    idleTimeoutS: 60,
    connection: SESSION_SETTINGS,
    camelCase: true,
  });
  // WAKE_NOTIFY=false: no idle flag, so writers never NOTIFY (two-phase commit refuses
  // PREPARE TRANSACTION after one); the relay then polls every POLL_INTERVAL_MS when idle.
  const idleFlag = config.wakeNotify ? new IdleFlag(config.databaseUrl) : undefined;
  const relay = new Relay({
    queue: new EventQueue(sql, {
      messageFormat: config.messageFormat,
      topicPrefix: config.topicPrefix,
    }),
    deadLetters: new DeadLetterStore(sql),
    sink,
    batchSize: config.batchSize,
    batchBytes: config.batchBytes,
    deadLetterPolicy: config.deadLetterPolicy,
    pollIntervalMs: config.pollIntervalMs,
    topicPrefix: config.topicPrefix,
    topicNamespace: config.topicNamespace,
    topicNaming: config.topicNaming,
    dryRun: config.dryRun,
    yieldAfterMs: config.leaderYieldAfterMs,
    diagnose: diagnoser(config, sql),
    ...(idleFlag ? { idleFlag } : {}),
  });
  logRelayEvents(relay, log);
  logFlow(relay, log, sql, options.flowLogEveryMs ?? FLOW_LOG_MS);
  attachEndpoints(endpoints, config, { relay, sink });
  const vacuumWatch = new VacuumWatch(sql, log, options.vacuumWatch);
  vacuumWatch.start();
  const snapshots = new SnapshotRunner(
    sql,
    log.child({ component: 'snapshot' }),
    () => {
      relay.wake();
    },
    options.snapshots,
  );
  // Only the active relay warns about vacuum and copies snapshots.
  relay.on((event) => {
    if (event.type !== 'leadership') return;
    vacuumWatch.setActive(event.active);
    snapshots.setActive(event.active);
  });
  snapshots.start();
  const listener = idleFlag
    ? startListener(
        config.databaseUrl,
        () => {
          relay.wake();
        },
        log.child({ component: 'listener' }),
      )
    : undefined;
  const done = relay.start();

  let shuttingDown: Promise<void> | undefined;
  const shutdown = (): Promise<void> => {
    stop.request();
    shuttingDown ??= (async () => {
      vacuumWatch.stop();
      // A query waiting for a server that is down fails now instead of holding the loop.
      stopReconnecting(sql);
      // The listener stops with the loop: during an outage it would keep retrying. A loop
      // waiting on a database or broker that does not answer is abandoned after
      // STOP_LOOP_WAIT_MS: nothing unacknowledged was deleted, so nothing is lost. A
      // snapshot chunk in flight commits or rolls back whole.
      await Promise.all([
        within(STOP_LOOP_WAIT_MS, relay.stop()),
        within(STOP_LOOP_WAIT_MS, snapshots.stop()),
        within(STOP_LOOP_WAIT_MS, listener?.stop()),
      ]);
      await within(1_000, endpoints?.close());
      await within(1_000, idleFlag?.close());
      await within(1_000, sink.close());
      await within(1_000, sql.end({ timeout: 1 }));
    })();
    return shuttingDown;
  };
  return { relay, shutdown, done };
}

/** The CLI command: runs until a signal, then shuts down within SHUTDOWN_TIMEOUT_MS. */
export async function relayCommand(config: Config, logger: Logger): Promise<number> {
  const stop = new StopSignal();
  const started: { relay?: RunningRelay } = {};
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals += 1;
    if (signals > 1) {
      logger.warn({ signal }, 'second signal: exiting at once');
      process.exit(1);
    }
    logger.info({ signal }, 'stopping: finishing the batch in flight');
    setTimeout(() => {
      // What still keeps the process alive, for whoever reads this line.
      logger.error(
        { pending: process.getActiveResourcesInfo() },
        `shutdown took longer than ${SHUTDOWN_TIMEOUT_MS} ms: exiting`,
      );
      process.exit(1);
    }, SHUTDOWN_TIMEOUT_MS).unref();
    stop.request();
    void started.relay?.shutdown();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  const running = await startRelay(config, logger, { stop });
  if (!running) return 0;
  started.relay = running;
  if (stop.requested) void running.shutdown();
  await running.done;
  await running.shutdown();
  return 0;
}
