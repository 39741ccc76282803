/**
 * `pg2kafka relay`: runs the relay until SIGTERM/SIGINT.
 *
 * Shutdown is layered: the first signal stops fetching and lets the batch in flight
 * finish (an unacked batch simply stays queued), then the lease is released, Kafka and
 * PostgreSQL disconnected, exit 0. A watchdog (unref'd) exits 1 if that takes longer
 * than SHUTDOWN_TIMEOUT_MS; a second signal exits 1 at once.
 */
import postgres from 'postgres';
import { migrate } from '../capture/migrate.ts';
import { describeConfig, type Config } from '../config.ts';
import { isTransientDatabaseError } from '../errors.ts';
import { DryRunSink } from '../kafka/dry-run-sink.ts';
import { createKafka, KafkajsSink } from '../kafka/kafkajs-sink.ts';
import type { EventSink } from '../kafka/sink.ts';
import type { Logger } from '../logger.ts';
import { backoffDelay } from '../relay/backoff.ts';
import { DeadLetterStore } from '../relay/dead-letters.ts';
import { IdleFlag, startListener } from '../relay/listener.ts';
import { EventQueue } from '../relay/queue.ts';
import { Relay, type RelayEvent } from '../relay/relay.ts';

export const SHUTDOWN_TIMEOUT_MS = 10_000;

export const relayHelp = `Usage: pg2kafka relay

Ships the events queued by pg2kafka.setup()'s triggers to Kafka (or, with DRY_RUN=true,
prints them on stdout) until stopped with SIGTERM or SIGINT. One relay per database is
active; others started on the same database wait as standbys and take over when it stops
or dies. Configuration comes from the environment (see pg2kafka --help).
`;

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
        logger.warn(
          {
            stage: event.stage,
            attempt: event.attempt,
            retryInMs: event.retryInMs,
            err: event.error,
          },
          `cannot ship events now, retrying in ${event.retryInMs} ms: ${event.error instanceof Error ? event.error.message : String(event.error)}`,
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
        logger.info(
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
      case 'stopped':
        logger.info('relay stopped');
        break;
    }
  });
}

/** Runs migrations at start, retrying while the database is unreachable. */
async function migrateWithRetry(
  config: Config,
  logger: Logger,
  stopped: () => boolean,
): Promise<void> {
  for (let attempt = 1; !stopped(); attempt += 1) {
    try {
      const result = await migrate({
        databaseUrl: config.databaseUrl,
        log: (m) => {
          logger.debug(m);
        },
      });
      logger.info(result, 'schema pg2kafka migrated');
      return;
    } catch (error) {
      if (!isTransientDatabaseError(error)) throw error;
      const retryInMs = backoffDelay(attempt);
      logger.warn(
        { attempt, retryInMs, err: error },
        `migration failed, retrying in ${retryInMs} ms`,
      );
      await new Promise((r) => setTimeout(r, retryInMs));
    }
  }
}

export interface RunningRelay {
  relay: Relay;
  /** Stops the relay and closes its connections. */
  shutdown(): Promise<void>;
  /** Settles when the relay has stopped. */
  done: Promise<void>;
}

/** Starts a relay from configuration; usable from code and tests. */
export async function startRelay(
  config: Config,
  logger: Logger,
  options: {
    /** Where events go instead of the configured Kafka client (the benchmark's discard sink). */
    sink?: EventSink;
  } = {},
): Promise<RunningRelay> {
  const log = logger.child({ component: 'relay' });
  log.info({ config: describeConfig(config) }, 'pg2kafka relay starting');
  if (config.tls && !config.tls.rejectUnauthorized) {
    log.warn('KAFKA_TLS_REJECT_UNAUTHORIZED=false: broker certificates are NOT verified');
  }
  let stopping = false;
  if (config.performMigrations) await migrateWithRetry(config, log, () => stopping);

  const sql = postgres(config.databaseUrl, {
    max: 3,
    connect_timeout: 10,
    idle_timeout: 60,
    connection: SESSION_SETTINGS,
    transform: { column: { from: postgres.toCamel } },
    onnotice: () => undefined,
  });
  const sink: EventSink =
    options.sink ??
    (config.dryRun
      ? new DryRunSink()
      : new KafkajsSink(createKafka(config, log), config, log.child({ component: 'kafka' })));
  // WAKE_NOTIFY=false: no idle flag, so writers never NOTIFY (two-phase commit refuses
  // PREPARE TRANSACTION after one); the relay then polls every POLL_INTERVAL_MS when idle.
  const idleFlag = config.wakeNotify ? new IdleFlag(config.databaseUrl) : undefined;
  const relay = new Relay({
    queue: new EventQueue(sql),
    deadLetters: new DeadLetterStore(sql),
    sink,
    batchSize: config.batchSize,
    batchBytes: config.batchBytes,
    deadLetterPolicy: config.deadLetterPolicy,
    pollIntervalMs: config.pollIntervalMs,
    topicPrefix: config.topicPrefix,
    topicNamespace: config.topicNamespace,
    dryRun: config.dryRun,
    ...(idleFlag ? { idleFlag } : {}),
  });
  logRelayEvents(relay, log);
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
    stopping = true;
    shuttingDown ??= (async () => {
      await relay.stop();
      await listener?.stop();
      await idleFlag?.close();
      await sink.close();
      await sql.end({ timeout: 2 });
    })();
    return shuttingDown;
  };
  return { relay, shutdown, done };
}

/** The CLI command: runs until a signal, then shuts down within SHUTDOWN_TIMEOUT_MS. */
export async function relayCommand(config: Config, logger: Logger): Promise<number> {
  const running = await startRelay(config, logger);
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals += 1;
    if (signals > 1) {
      logger.warn({ signal }, 'second signal: exiting at once');
      process.exit(1);
    }
    logger.info({ signal }, 'stopping: finishing the batch in flight');
    setTimeout(() => {
      logger.error(`shutdown took longer than ${SHUTDOWN_TIMEOUT_MS} ms: exiting`);
      process.exit(1);
    }, SHUTDOWN_TIMEOUT_MS).unref();
    void running.shutdown();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  await running.done;
  await running.shutdown();
  return 0;
}
