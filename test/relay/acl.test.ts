/**
 * A broker with an authorizer (KRaft's StandardAuthorizer, SASL/PLAIN users) where the
 * relay's user may write and describe its topic but not read its configuration
 * (DescribeConfigs). The librdkafka sink reads each topic's limits that way: denied, it
 * says so in a warning naming the topic, assumes the broker's defaults, and ships. The
 * kafkajs sink never reads them (kafkajs stops a partition at a refused batch by itself):
 * it ships without that warning. The test runs with the client of the run (KAFKA_CLIENT).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import kafkajs, { Kafka, logLevel, type Admin } from 'kafkajs';
import { KafkaBroker } from '../../scripts/kafka-broker.ts';
import { uniqueName, useTestDatabase, waitFor } from '../helpers.ts';
import { useRelays } from './support.ts';

// kafkajs is CommonJS: its enums come with the default export.
const { AclOperationTypes, AclPermissionTypes, AclResourceTypes, ResourcePatternTypes } = kafkajs;

const db = useTestDatabase();
let broker: KafkaBroker;
const brokers: string[] = [];
const { relay, queueDepth } = useRelays(db, { brokers });
const USERS = { relay: 'relay-secret', admin: 'admin-secret' };

function client(username: keyof typeof USERS): Kafka {
  return new Kafka({
    clientId: uniqueName(`acl-${username}`),
    brokers,
    sasl: { mechanism: 'plain', username, password: USERS[username] },
    logLevel: logLevel.NOTHING,
  });
}

before(async () => {
  broker = await KafkaBroker.start({ saslUsers: USERS, superUsers: ['admin'] });
  brokers.push(broker.brokers);
});

after(async () => {
  await broker.destroy();
});

/** ALLOW `operations` on the topic for User:relay. */
type AclOperation = (typeof AclOperationTypes)[keyof typeof AclOperationTypes];

async function allow(admin: Admin, topic: string, operations: AclOperation[]): Promise<void> {
  await admin.createAcls({
    acl: operations.map((operation) => ({
      resourceType: AclResourceTypes.TOPIC,
      resourceName: topic,
      resourcePatternType: ResourcePatternTypes.LITERAL,
      principal: 'User:relay',
      host: '*',
      operation,
      permissionType: AclPermissionTypes.ALLOW,
    })),
  });
}

const KAFKAJS = process.env.KAFKA_CLIENT === 'kafkajs';
const WARNING = "cannot read these topics' configuration";

test(`DescribeConfigs denied on its topic: the relay ${KAFKAJS ? '(kafkajs) needs no such read' : 'warns, naming the topic,'} and ships every event in order`, async () => {
  await db.sql`create table limited (id int primary key, v text)`;
  await db.sql`select pg2kafka.setup('limited', 'id')`;
  const topic = `pg2kafka.${db.name}.limited`;
  const kafka = client('admin');
  const admin = kafka.admin();
  await admin.connect();
  try {
    await admin.createTopics({ topics: [{ topic, numPartitions: 1 }] });
    await allow(admin, topic, [AclOperationTypes.WRITE, AclOperationTypes.DESCRIBE]);
    // The ACLs as the broker reports them: nothing allows DescribeConfigs.
    const { resources } = await admin.describeAcls({
      resourceType: AclResourceTypes.TOPIC,
      resourceName: topic,
      resourcePatternType: ResourcePatternTypes.LITERAL,
      operation: AclOperationTypes.ANY,
      permissionType: AclPermissionTypes.ANY,
    });
    assert.deepEqual(
      resources.flatMap((r) => r.acls.map((a) => a.operation)).sort(),
      [AclOperationTypes.WRITE, AclOperationTypes.DESCRIBE].sort(),
    );
  } finally {
    await admin.disconnect();
  }

  await db.sql`insert into limited values (1, 'a'), (2, 'b')`;
  await db.sql`update limited set v = 'c' where id = 1`;
  const r = relay({
    KAFKA_SASL_MECHANISM: 'plain',
    KAFKA_SASL_USERNAME: 'relay',
    KAFKA_SASL_PASSWORD: USERS.relay,
    AUTO_CREATE_TOPICS: 'false',
  });
  if (!KAFKAJS) {
    const warning = await r.waitForLog(WARNING, 30_000);
    assert.ok(warning.level >= 40, 'a warning');
    assert.deepEqual(warning.topics, [topic]);
    assert.deepEqual(warning.codes, ['TOPIC_AUTHORIZATION_FAILED']);
  }
  await waitFor('an empty queue', async () => (await queueDepth()) === 0, 30_000);
  if (KAFKAJS) {
    assert.ok(!r.logs.some((l) => l.msg.includes(WARNING)), 'kafkajs reads no topic configuration');
  }
  assert.equal((await r.stop()).code, 0);
  assert.ok(
    !r.stderrText.some((l) => l.includes(USERS.relay)),
    'the password appears in no log line',
  );

  const consumer = kafka.consumer({ groupId: uniqueName('acl-group') });
  await consumer.connect();
  const seen: string[] = [];
  try {
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    await consumer.run({
      eachMessage: ({ message }) => {
        const value = JSON.parse(message.value?.toString() ?? 'null') as {
          statement: string;
          data: unknown;
        };
        seen.push(
          `${message.key?.toString() ?? ''} ${value.statement} ${JSON.stringify(value.data)}`,
        );
        return Promise.resolve();
      },
    });
    await waitFor('three messages', () => seen.length >= 3, 30_000);
  } finally {
    await consumer.disconnect();
  }
  assert.deepEqual(seen, [
    '1 INSERT {"id":1,"v":"a"}',
    '2 INSERT {"id":2,"v":"b"}',
    '1 UPDATE {"v":"c"}',
  ]);
});
