/**
 * What a topic accepts, known before sending (librdkafka sink): the limits read from the
 * broker's DescribeConfigs, and how a send is cut into produce rounds by them.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  DEFAULT_TOPIC_LIMITS,
  describeTopicLimits,
  produceRounds,
  topicLimits,
} from '../../src/kafka/topic-limits.ts';
import type { OutboundMessage } from '../../src/kafka/sink.ts';
import { uniqueName, useKafka } from '../helpers.ts';

const kafka = useKafka();
const NOW = 1_700_000_000_000;

function message(topic: string, key: string | null, bytes = 100): OutboundMessage {
  return { topic, key, value: 'v'.repeat(bytes), timestamp: String(NOW), headers: {} };
}

test("a topic's limits come from its own configuration; a missing or unreadable topic among others spoils none of them", async () => {
  const small = uniqueName('limits_small');
  const compacted = uniqueName('limits_compacted');
  const missing = uniqueName('limits_missing');
  await kafka.createTopic(small, 1, { 'max.message.bytes': '3000' });
  await kafka.createTopic(compacted, 1, {
    'cleanup.policy': 'compact',
    'message.timestamp.before.max.ms': '3600000',
  });
  const admin = await kafka.admin();
  try {
    const { limits, failed } = await describeTopicLimits(admin, [small, missing, compacted]);
    // message.timestamp.after.max.ms is left out: its default differs between broker versions.
    const read = (topic: string) => {
      const l = limits.get(topic);
      return l && { maxBatchBytes: l.maxBatchBytes, compacted: l.compacted, behindMs: l.behindMs };
    };
    assert.deepEqual(
      {
        small: read(small),
        compacted: read(compacted),
        missing: read(missing),
        failed: [...failed],
      },
      {
        small: { maxBatchBytes: 3000, compacted: false, behindMs: Infinity },
        compacted: {
          maxBatchBytes: DEFAULT_TOPIC_LIMITS.maxBatchBytes,
          compacted: true,
          behindMs: 3_600_000,
        },
        missing: undefined,
        failed: [[missing, 'UNKNOWN_TOPIC_OR_PARTITION']],
      },
    );
  } finally {
    await admin.disconnect();
  }
});

test('topic limits: LogAppendTime topics take any timestamp; an unbounded window is Infinity', () => {
  assert.deepEqual(
    topicLimits([
      { name: 'message.timestamp.type', value: 'LogAppendTime' },
      { name: 'message.timestamp.after.max.ms', value: '1000' },
    ]),
    { ...DEFAULT_TOPIC_LIMITS, behindMs: Infinity, aheadMs: Infinity },
  );
  assert.equal(
    topicLimits([{ name: 'message.timestamp.difference.max.ms', value: '9223372036854775807' }])
      .behindMs,
    Infinity,
  );
});

test('produce rounds: a message the topic may refuse goes alone, and no round holds more of a topic than it accepts or than its cap', () => {
  const limits = new Map([
    ['small', { ...DEFAULT_TOPIC_LIMITS, maxBatchBytes: 400 }],
    ['compacted', { ...DEFAULT_TOPIC_LIMITS, compacted: true }],
  ]);
  const messages = [
    message('small', 'a'), // 0
    message('small', 'b'), // 1
    message('compacted', 'c'), // 2
    message('compacted', null), // 3: refused on a compacted topic
    message('small', 'd'), // 4
    message('small', 'e', 1000), // 5: larger than the topic takes
    message('other', 'f'), // 6
    message('other', 'g'), // 7
    message('other', 'h'), // 8
  ];
  const rounds = (topicMessages?: (topic: string) => number): number[][] =>
    produceRounds(messages, (t) => limits.get(t) ?? DEFAULT_TOPIC_LIMITS, {
      maxBytes: 1_000_000,
      maxMessages: 1000,
      now: NOW,
      topicMessages,
    });
  assert.deepEqual(rounds(), [[0, 1, 2], [3], [4], [5], [6, 7, 8]]);
  // A cap on one topic's messages per round (exactly-once, after a batch refused whole).
  assert.deepEqual(
    rounds((t) => (t === 'other' ? 2 : Infinity)),
    [[0, 1, 2], [3], [4], [5], [6, 7], [8]],
  );
  // A timestamp outside the topic's window goes alone too.
  const windowed = { ...DEFAULT_TOPIC_LIMITS, behindMs: 3_600_000 };
  const old = { ...message('w', 'x'), timestamp: String(NOW - 2 * 3_600_000) };
  assert.deepEqual(
    produceRounds([message('w', 'y'), old, message('w', 'z')], () => windowed, {
      maxBytes: 1_000_000,
      maxMessages: 1000,
      now: NOW,
    }),
    [[0], [1], [2]],
  );
});
