import pino, { type Logger } from 'pino';

export type { Logger };

/**
 * JSON logs on stderr, so stdout stays free for machine-readable output (DRY_RUN events,
 * command results). Components take child loggers: `logger.child({ component: 'relay' })`.
 */
export function createLogger(level = 'info'): Logger {
  return pino({ level, base: { service: 'pg2kafka' } }, pino.destination({ fd: 2, sync: true }));
}
