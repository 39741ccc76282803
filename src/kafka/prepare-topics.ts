/**
 * Making sure topics exist before their events are sent, the same way for every client:
 * topics already seen are skipped; a missing one is created when AUTO_CREATE_TOPICS
 * allows it (another relay may be first: that is fine) and waited for until its
 * partitions are served; what cannot be used is returned, so that the relay keeps its
 * tables' events queued. A transient failure (Kafka unreachable) throws.
 */
import type { Config } from '../config.ts';
import type { Logger } from '../logger.ts';
import { permanentTopicProblem } from './errors.ts';
import type { TopicProblem } from './sink.ts';

/** What a client offers for it. */
export interface TopicAdmin {
  listTopics(): Promise<string[]>;
  /** Creates a topic; false when it exists already. */
  createTopic(topic: string): Promise<boolean>;
  /** Waits (a bounded time) until a new topic's partitions are served. */
  untilServed(topic: string): Promise<void>;
}

export async function prepareTopics(options: {
  topics: string[];
  /** Topics known to exist; grows as topics are found or created. */
  known: Set<string>;
  admin: TopicAdmin;
  config: Config;
  logger: Logger;
}): Promise<TopicProblem[]> {
  const { topics, known, admin, config, logger } = options;
  const unknown = topics.filter((t) => !known.has(t));
  if (unknown.length === 0) return [];
  const existing = new Set(await admin.listTopics());
  for (const t of unknown) if (existing.has(t)) known.add(t);
  const missing = unknown.filter((t) => !existing.has(t));
  if (missing.length === 0) return [];
  if (!config.autoCreateTopics) {
    return missing.map((topic) => ({
      topic,
      retriable: true,
      reason: `topic "${topic}" does not exist and AUTO_CREATE_TOPICS=false: create it, or set AUTO_CREATE_TOPICS=true`,
    }));
  }
  const problems: TopicProblem[] = [];
  for (const topic of missing) {
    try {
      // False: it exists already (another relay, or an attempt that failed after creating it).
      if (await admin.createTopic(topic)) logger.info({ topic }, 'created topic');
      else logger.debug({ topic }, 'topic exists already');
      await admin.untilServed(topic);
      known.add(topic);
    } catch (error) {
      const reason = permanentTopicProblem(error);
      if (reason === undefined) throw error;
      problems.push({
        topic,
        retriable: false,
        reason: `cannot create topic "${topic}": ${reason}`,
      });
    }
  }
  return problems;
}
