/**
 * The relay's HTTP endpoints, on one port (HTTP_PORT):
 *   /healthz  liveness: the loop turned recently, or sleeps on purpose. Never fails
 *             because PostgreSQL or Kafka is down (an outage must not become a restart
 *             storm): the loop keeps turning while it retries.
 *   /readyz   the database answers and, for the active relay, Kafka does; a standby is
 *             ready too. The body says the role.
 *   /metrics  Prometheus text (metrics.ts).
 *   /status   what `pg2kafka status --json` shows (without query text, read at most
 *             once per STATUS_REUSE_MS), plus this relay's own state.
 * Every answer is JSON except /metrics; a probe that takes longer than PROBE_TIMEOUT_MS
 * counts as failed.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type postgres from 'postgres';
import type { Status } from '../commands/status.ts';
import type { EventSink } from '../kafka/sink.ts';
import type { Relay } from '../relay/relay.ts';
import { settleWithin, TIMED_OUT } from '../relay/within.ts';
import type { RelayMetrics } from './metrics.ts';

/** The loop is stuck when it has neither turned nor meant to sleep for this long. */
export const LIVENESS_MS = 120_000;
/** How long a readiness check waits for the database or Kafka. */
export const PROBE_TIMEOUT_MS = 3_000;
/** How long one read of the status answers /status. */
export const STATUS_REUSE_MS = 2_000;

/** What the endpoints answer from, once the relay has started. */
export interface RelayParts {
  relay: Relay;
  metrics: RelayMetrics;
  /** A pool of the endpoints' own (closed with them): the relay's is for shipping. */
  sql: postgres.Sql;
  sink: EventSink;
  /** What `pg2kafka status --json` shows. */
  status: () => Promise<Status>;
}

/**
 * The status as /status serves it: without the query text of the transaction holding
 * vacuum back, which can carry data (the endpoints have no authentication);
 * `pg2kafka status` shows it.
 */
function withoutQueryText(status: Status): Status {
  const holder = status.vacuumHolder;
  return holder ? { ...status, vacuumHolder: { ...holder, query: undefined } } : status;
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Runs a check: undefined when it passed, else what went wrong. */
async function check(what: string, run: () => Promise<unknown>): Promise<string | undefined> {
  try {
    const result = await settleWithin(run(), PROBE_TIMEOUT_MS);
    return result === TIMED_OUT ? `${what}: no answer within ${PROBE_TIMEOUT_MS} ms` : undefined;
  } catch (error) {
    return `${what}: ${message(error)}`;
  }
}

/**
 * Served from the start of the process: while the relay waits for PostgreSQL (or
 * migrates), /healthz answers alive and /readyz not ready ("starting"), so that an
 * orchestrator waits rather than restarting it. attach() hands over the running relay.
 */
export class Endpoints {
  private server: Server | undefined;
  private options: RelayParts | undefined;
  /** The last status read: requests within STATUS_REUSE_MS (or while it runs) share it. */
  private statusRead: { at: number; status: Promise<unknown> } | undefined;

  /**
   * The status, read at most once per STATUS_REUSE_MS however often /status is asked (it
   * counts the whole queue), bounded by PROBE_TIMEOUT_MS.
   */
  private status(parts: RelayParts): Promise<unknown> {
    const now = performance.now();
    if (this.statusRead && now - this.statusRead.at < STATUS_REUSE_MS) {
      return this.statusRead.status;
    }
    const status = settleWithin(
      parts.status().then(withoutQueryText, (error: unknown) => ({ error: message(error) })),
      PROBE_TIMEOUT_MS,
    ).then((read) =>
      read === TIMED_OUT
        ? { error: `no answer from PostgreSQL within ${PROBE_TIMEOUT_MS} ms` }
        : read,
    );
    this.statusRead = { at: now, status };
    return status;
  }

  attach(parts: RelayParts): void {
    this.options = parts;
  }

  /** Listens on `port` (0: any free port); resolves with the port it got. */
  async listen(port: number, host?: string): Promise<number> {
    const server = createServer((request, response) => {
      this.handle(request, response).catch((error: unknown) => {
        send(response, 500, { error: message(error) });
      });
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        // A failed accept (too many open files) must not stop the relay.
        server.on('error', () => undefined);
        resolve();
      });
    });
    return (server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    const { server } = this;
    if (server) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => {
        server.close(() => {
          resolve();
        });
      });
    }
    await this.options?.sql.end({ timeout: 1 });
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const path = (request.url ?? '/').split('?')[0];
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      send(response, 405, { error: 'only GET' });
      return;
    }
    const parts = this.options;
    if (!parts) {
      // Starting: alive, not ready, nothing else to say yet.
      if (path === '/healthz') send(response, 200, { alive: true, starting: true });
      else if (path === '/readyz') {
        send(response, 503, {
          ready: false,
          role: 'starting',
          problems: ['starting: waiting for PostgreSQL, or migrating'],
        });
      } else send(response, 503, { error: 'starting: waiting for PostgreSQL, or migrating' });
      return;
    }
    switch (path) {
      case '/healthz': {
        const loop = parts.relay.liveness();
        const alive = loop.sinceTickMs < LIVENESS_MS || loop.sleepLeftMs > 0;
        send(response, alive ? 200 : 503, {
          alive,
          loop: { sinceTickMs: loop.sinceTickMs, sleepLeftMs: loop.sleepLeftMs },
        });
        return;
      }
      case '/readyz': {
        const { relay, sql, sink } = parts;
        const loop = relay.liveness();
        const problems = [
          await check('PostgreSQL', () => sql`select 1`),
          loop.active && sink.check
            ? await check('Kafka', () => sink.check?.() ?? Promise.resolve())
            : undefined,
        ].filter((p): p is string => p !== undefined);
        send(response, problems.length === 0 ? 200 : 503, {
          ready: problems.length === 0,
          role: loop.active ? 'active' : 'standby',
          problems,
        });
        return;
      }
      case '/metrics': {
        const text = await parts.metrics.text();
        response.writeHead(200, { 'content-type': parts.metrics.registry.contentType });
        response.end(text);
        return;
      }
      case '/status': {
        const loop = parts.relay.liveness();
        const status = await this.status(parts);
        send(response, 200, {
          relay: {
            holder: parts.relay.holder,
            role: loop.active ? 'active' : 'standby',
            epoch: loop.epoch ?? null,
            heldTopics: parts.metrics.heldTopicList(),
          },
          status,
        });
        return;
      }
      default:
        send(response, 404, {
          error: 'not found',
          endpoints: ['/healthz', '/readyz', '/metrics', '/status'],
        });
    }
  }
}

function send(response: ServerResponse, code: number, body: unknown): void {
  if (response.headersSent) {
    response.end();
    return;
  }
  response.writeHead(code, { 'content-type': 'application/json' });
  response.end(`${JSON.stringify(body)}\n`);
}
