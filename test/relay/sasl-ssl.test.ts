/**
 * SASL_SSL, live, for both clients: a broker that serves clients only over SASL_SSL, with
 * SCRAM-SHA-256 and SCRAM-SHA-512 users and certificates made with keytool. The relay
 * ships with the right CA and credentials; a wrong password, a CA that did not sign the
 * broker's certificate and a certificate that does not name the host each keep the events
 * queued and the relay running, with a warning that says what is wrong; no plaintext
 * connection ever carries an event, and no password reaches any log line.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test, type TestContext } from 'node:test';
import { Kafka, logLevel } from 'kafkajs';
import { KafkaBroker, type BrokerTls } from '../../scripts/kafka-broker.ts';
import { uniqueName, useTestDatabase, waitFor } from '../helpers.ts';
import { collect, useRelays, type LogLine, type RelayProcess } from './support.ts';

const SCRAM_256 = { username: 'ada', password: 'ada-Scram256-s3cret' };
const SCRAM_512 = { username: 'bob', password: 'bob-Scram512-s3cret' };
const WRONG_PASSWORD = 'wr0ng-Guess-9f3a';
const SECRETS = [SCRAM_256.password, SCRAM_512.password, WRONG_PASSWORD];
const CLIENTS = ['kafkajs', 'rdkafka'] as const;
type Client = (typeof CLIENTS)[number];
/** The broker's line for a client that started TLS and gave up in the handshake. */
const HANDSHAKE_FAILED = /Failed authentication with .*SSL handshake failed/;

let broker: KafkaBroker;
let certs: BrokerTls;
const brokerLog: Array<{ at: number; line: string }> = [];
/** A client of the test's own, over SASL_SSL: it reads back what the relays shipped. */
let reader: Kafka;
/** Every relay started by this file, for the log checks at its end. */
const started: RelayProcess[] = [];

before(async () => {
  broker = await KafkaBroker.start({
    saslSsl: {
      scramUsers: [
        { mechanism: 'SCRAM-SHA-256', ...SCRAM_256 },
        { mechanism: 'SCRAM-SHA-512', ...SCRAM_512 },
      ],
    },
    onLogLine: (line) => brokerLog.push({ at: Date.now(), line }),
  });
  certs = broker.tls as BrokerTls;
  reader = new Kafka({
    clientId: uniqueName('sasl-ssl-reader'),
    brokers: [broker.brokers],
    ssl: { ca: [readFileSync(certs.caFile, 'utf8')] },
    sasl: { mechanism: 'scram-sha-512', ...SCRAM_512 },
    logLevel: logLevel.NOTHING,
  });
});

after(async () => {
  await broker.destroy();
});

/** The relay's Kafka settings: SASL_SSL with SCRAM-SHA-256 and the right CA, unless changed. */
function kafkaEnv(client: Client, changes: Record<string, string> = {}): Record<string, string> {
  return {
    // The test runner may set KAFKA_CLIENT for the whole run: each relay says its own.
    KAFKA_CLIENT: client,
    KAFKA_BROKERS: broker.brokers,
    KAFKA_TLS: 'true',
    KAFKA_TLS_CA_FILE: certs.caFile,
    KAFKA_SASL_MECHANISM: 'scram-sha-256',
    KAFKA_SASL_USERNAME: SCRAM_256.username,
    KAFKA_SASL_PASSWORD: SCRAM_256.password,
    ...changes,
  };
}

async function topicExists(topic: string): Promise<boolean> {
  const admin = reader.admin();
  await admin.connect();
  try {
    return (await admin.listTopics()).includes(topic);
  } finally {
    await admin.disconnect();
  }
}

/** Warnings and errors: what an operator sees at the default LOG_LEVEL=info. */
const warnings = (r: RelayProcess): LogLine[] => r.logs.filter((l) => l.level >= 40);

function distinctWarnings(r: RelayProcess): string {
  return [...new Set(warnings(r).map((l) => l.msg.replace(/retrying in \d+ ms/, 'retrying')))]
    .map((m) => `  ${m}`)
    .join('\n');
}

const exitedYet = (r: RelayProcess): Promise<boolean> =>
  Promise.race([
    r.exited.then(() => true),
    new Promise<boolean>((resolve) => {
      setImmediate(() => {
        resolve(false);
      });
    }),
  ]);

for (const client of CLIENTS) {
  describe(`KAFKA_CLIENT=${client}`, () => {
    const db = useTestDatabase();
    const { relay: startRelay, queueDepth } = useRelays(db, { brokers: [] });
    const relay = (env: Record<string, string>): RelayProcess => {
      const r = startRelay(env);
      started.push(r);
      return r;
    };
    const topic = (): string => `pg2kafka.${db.name}.secured`;

    /** Two events queued for the table `secured`: every test of this client awaits it. */
    let queued: Promise<void> | undefined;
    const queueTwoEvents = (): Promise<void> =>
      (queued ??= (async () => {
        await db.sql`create table secured (id int primary key, v text)`;
        await db.sql`select pg2kafka.setup('secured', 'id')`;
        await db.sql`insert into secured values (1, 'one'), (2, 'two')`;
      })());

    /**
     * Starts a relay that cannot connect; once it has failed twice (it keeps retrying),
     * checks that nothing moved and that it still runs, stops it, and returns it.
     * `brokerSays`: what the broker logs about the attempt, proof that it came over TLS
     * (and SASL), never as plaintext (the broker logs nothing at INFO for a handshake
     * that Node's TLS abandons, so kafkajs's TLS cases have none).
     */
    async function failingRelay(
      env: Record<string, string>,
      brokerSays: RegExp | undefined,
    ): Promise<RelayProcess> {
      await queueTwoEvents();
      const since = Date.now();
      const r = relay(env);
      let exit: Awaited<RelayProcess['exited']>;
      try {
        await r.waitForLog('cannot ship events now', 30_000, (l) => l.level >= 40);
        await r.waitForLog(
          'cannot ship events now',
          30_000,
          (l) => l.level >= 40 && Number(l.attempt) >= 2,
        );
        assert.equal(await queueDepth(), 2, 'the events stay queued');
        assert.equal(await exitedYet(r), false, 'the relay keeps running and retrying');
        assert.equal(await topicExists(topic()), false, 'nothing reached Kafka');
        if (brokerSays) {
          assert.ok(
            brokerLog.some(({ at, line }) => at >= since && brokerSays.test(line)),
            `the broker logged ${String(brokerSays)} for the attempt`,
          );
        }
      } finally {
        // Stopped even when a check failed: a relay left running holds the lease.
        exit = await r.stop();
      }
      assert.deepEqual(exit, { code: 0, signal: null }, 'a clean stop on SIGTERM');
      return r;
    }

    /**
     * A warning matching every pattern (shown as a diagnostic of test `t`), or a failure
     * that shows what was logged instead.
     */
    function clearWarning(t: TestContext, r: RelayProcess, what: string, patterns: RegExp[]): void {
      const line = warnings(r).find((l) => patterns.every((p) => p.test(l.msg)));
      assert.ok(
        line,
        `${client}: a warning that says ${what} (${patterns.map(String).join(' and ')}); ` +
          `the relay's warnings were:\n${distinctWarnings(r)}`,
      );
      t.diagnostic(`${client} says: ${line.msg}`);
    }

    test('a wrong password: the events stay queued and the relay says authentication failed', async (t) => {
      const r = await failingRelay(
        kafkaEnv(client, { KAFKA_SASL_PASSWORD: WRONG_PASSWORD }),
        /Failed authentication with .*invalid credentials with SASL mechanism SCRAM-SHA-256/,
      );
      clearWarning(t, r, 'the login was refused', [/authenticat/i, /SASL|SCRAM|credential/i]);
    });

    test('a CA that did not sign the broker certificate: the events stay queued and the relay says the certificate is not trusted', async (t) => {
      const r = await failingRelay(
        kafkaEnv(client, { KAFKA_TLS_CA_FILE: certs.otherCaFile }),
        client === 'rdkafka' ? HANDSHAKE_FAILED : undefined,
      );
      clearWarning(t, r, 'the certificate is not trusted', [
        /TLS|SSL/,
        /certificate/i,
        /\bCA\b|trusted/,
      ]);
    });

    test('a certificate that does not name the host: the events stay queued and the relay says so', async (t) => {
      const r = await failingRelay(
        kafkaEnv(client, { KAFKA_BROKERS: certs.mismatchBrokers }),
        client === 'rdkafka' ? HANDSHAKE_FAILED : undefined,
      );
      clearWarning(t, r, 'the certificate does not name the host', [
        /TLS|SSL/,
        /certificate/i,
        /\bhost/i,
      ]);
    });

    test('the right CA and SCRAM-SHA-256, then SCRAM-SHA-512: the relay ships every queued event', async () => {
      await queueTwoEvents();
      const first = relay(kafkaEnv(client));
      await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000);
      assert.deepEqual(await first.stop(), { code: 0, signal: null });

      await db.sql`insert into secured values (3, 'three')`;
      await db.sql`update secured set v = 'TWO' where id = 2`;
      const second = relay(
        kafkaEnv(client, {
          KAFKA_SASL_MECHANISM: 'SCRAM-SHA-512',
          KAFKA_SASL_USERNAME: SCRAM_512.username,
          KAFKA_SASL_PASSWORD: SCRAM_512.password,
        }),
      );
      await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000);
      assert.deepEqual(await second.stop(), { code: 0, signal: null });

      const collector = await collect(reader, topic());
      try {
        await waitFor('4 events on the topic', () => collector.received.length >= 4, 30_000);
      } finally {
        await collector.stop();
      }
      assert.deepEqual(
        collector.received.map((m) => [m.key, m.statement, m.data]),
        [
          ['1', 'INSERT', { id: 1, v: 'one' }],
          ['2', 'INSERT', { id: 2, v: 'two' }],
          ['3', 'INSERT', { id: 3, v: 'three' }],
          ['2', 'UPDATE', { v: 'TWO' }],
        ],
      );
      for (const r of [first, second]) {
        assert.deepEqual(warnings(r), [], `no warning while shipping:\n${distinctWarnings(r)}`);
      }
    });
  });
}

test('the broker serves clients over SASL_SSL only: no plaintext listener, and plaintext gets nothing', async () => {
  assert.deepEqual(
    broker.listeners.map((l) => [l.protocol, l.address]),
    [
      ['SASL_SSL', broker.brokers],
      ['SASL_SSL', certs.mismatchBrokers],
    ],
  );
  for (const options of [
    // The right credentials, without TLS.
    { sasl: { mechanism: 'scram-sha-256' as const, ...SCRAM_256 } },
    // TLS without SASL.
    { ssl: { ca: [readFileSync(certs.caFile, 'utf8')] } },
  ]) {
    const admin = new Kafka({
      clientId: uniqueName('sasl-ssl-probe'),
      brokers: [broker.brokers],
      logLevel: logLevel.NOTHING,
      connectionTimeout: 2000,
      retry: { retries: 0 },
      ...options,
    }).admin();
    await assert.rejects(async () => {
      await admin.connect();
      await admin.listTopics();
    });
    await admin.disconnect();
  }
});

test('no password appears in any log line of any relay, in any encoding', () => {
  // Per client: three that failed, two that shipped.
  assert.equal(started.length, 5 * CLIENTS.length, 'every relay ran');
  const forms = SECRETS.flatMap((secret) => [
    secret,
    Buffer.from(secret).toString('base64'),
    Buffer.from(secret).toString('base64url'),
    Buffer.from(secret).toString('hex'),
    encodeURIComponent(secret),
    JSON.stringify(secret).slice(1, -1),
  ]);
  for (const r of started) {
    const text = [...r.stderrText, ...r.stdout].join('\n');
    assert.ok(text.length > 0, 'the relay logged something');
    for (const form of forms) {
      assert.equal(text.toLowerCase().includes(form.toLowerCase()), false, `"${form}" was logged`);
    }
  }
});
