/**
 * Exactly-once delivery's marker: each Kafka transaction carries one record, to partition
 * 0 of the install's marker topic, that holds the queue ids the transaction delivered.
 * A relay that takes over reads the last committed one (read_committed) and deletes its
 * ids before it fetches: a crash between commit and delete then sends nothing twice.
 *
 * The ids are written as ranges: a batch's ids are mostly consecutive.
 */
import type * as Rdkafka from '@confluentinc/kafka-javascript';

export const MARKER_PARTITION = 0;
/** Records read back from the end: each transaction adds its marker and a commit record. */
const LOOKBACK_RECORDS = 50;
const READ_TIMEOUT_MS = 10_000;

interface Marker {
  /** The lease epoch of the relay that committed it (for a person reading the topic). */
  epoch: string;
  /** Inclusive ranges of queue ids, ascending. */
  ranges: Array<[string, string]>;
}

/** The marker's value for these queue ids (any order). */
export function encodeMarker(ids: string[], epoch: string): string {
  const sorted = ids.map((id) => BigInt(id)).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const ranges: Array<[string, string]> = [];
  let start: bigint | undefined;
  let end: bigint | undefined;
  for (const id of sorted) {
    if (end !== undefined && id <= end + 1n) {
      if (id > end) end = id;
      continue;
    }
    if (start !== undefined && end !== undefined) ranges.push([String(start), String(end)]);
    start = id;
    end = id;
  }
  if (start !== undefined && end !== undefined) ranges.push([String(start), String(end)]);
  const marker: Marker = { epoch, ranges };
  return JSON.stringify(marker);
}

/** The queue ids of a marker's value; [] for anything that is not one. */
export function decodeMarker(value: string): string[] {
  try {
    const marker = JSON.parse(value) as Partial<Marker>;
    const ids: string[] = [];
    for (const [from, to] of Array.isArray(marker.ranges) ? marker.ranges : []) {
      for (let id = BigInt(from); id <= BigInt(to); id += 1n) ids.push(String(id));
    }
    return ids;
  } catch {
    return [];
  }
}

/**
 * Reads the last committed marker of `transactionalId` (read_committed) and returns its
 * ids; [] when there is none. Called after initTransactions, so no transaction of this
 * install is open and the end of the partition is stable.
 */
export async function readLastMarker(options: {
  rd: typeof Rdkafka;
  settings: Record<string, string | number | boolean>;
  topic: string;
  transactionalId: string;
}): Promise<string[]> {
  const { rd, settings, topic, transactionalId } = options;
  const consumer = new rd.KafkaConsumer(
    {
      ...settings,
      'group.id': `${transactionalId}.recovery`,
      'enable.auto.commit': false,
      'isolation.level': 'read_committed',
      'enable.partition.eof': true,
      'fetch.wait.max.ms': 50,
    },
    { 'auto.offset.reset': 'earliest' },
  );
  const call = <T>(run: (cb: (error: unknown, value: T) => void) => void): Promise<T> =>
    new Promise((resolve, reject) => {
      run((error, value) => {
        if (error) {
          reject(
            error instanceof Error
              ? error
              : new Error((error as { message?: string }).message ?? 'librdkafka failed'),
          );
        } else resolve(value);
      });
    });
  await call((cb) => consumer.connect({ timeout: READ_TIMEOUT_MS }, cb));
  try {
    const { lowOffset, highOffset } = await call<Rdkafka.WatermarkOffsets>((cb) => {
      consumer.queryWatermarkOffsets(topic, MARKER_PARTITION, READ_TIMEOUT_MS, cb);
    });
    if (highOffset <= lowOffset) return [];
    let atEnd = false;
    consumer.on('partition.eof', () => {
      atEnd = true;
    });
    consumer.assign([
      {
        topic,
        partition: MARKER_PARTITION,
        offset: Math.max(lowOffset, highOffset - LOOKBACK_RECORDS),
      },
    ]);
    let last: string[] = [];
    const deadline = performance.now() + READ_TIMEOUT_MS;
    while (!atEnd) {
      if (performance.now() > deadline) {
        throw new Error(`could not read the marker topic "${topic}" to its end in time`);
      }
      const messages = await call<Rdkafka.Message[]>((cb) => {
        consumer.consume(100, cb);
      });
      for (const m of messages) {
        if (m.key?.toString() === transactionalId && m.value) {
          last = decodeMarker(m.value.toString());
        }
        if (m.offset >= highOffset - 1) atEnd = true;
      }
    }
    return last;
  } finally {
    await new Promise<void>((resolve) => {
      consumer.disconnect(() => {
        resolve();
      });
    });
  }
}
