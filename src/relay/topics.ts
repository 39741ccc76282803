import { TOPIC_NAME_CHARS, TOPIC_NAME_MAX, type TopicNamingStyle } from '../config.ts';

export interface TopicNaming {
  prefix: string;
  namespace: string | undefined;
  database: string;
  /** pg2kafka's names (the default) or Debezium's. */
  style?: TopicNamingStyle;
}

/**
 * `<prefix>.<database>.<table>`, or `<prefix>.<namespace>.<database>.<table>`; for a table
 * outside schema public the table part is `<schema>.<table>`. In Debezium's style
 * (TOPIC_NAMING=debezium) `<prefix>.<schema>.<table>` (a namespace after the prefix).
 */
export function topicName(naming: TopicNaming, schema: string, table: string): string {
  if (naming.style === 'debezium') {
    return [naming.prefix, naming.namespace, schema, table]
      .filter((part) => part !== undefined)
      .join('.');
  }
  const tablePart = schema === 'public' ? table : `${schema}.${table}`;
  return [naming.prefix, naming.namespace, naming.database, tablePart]
    .filter((part) => part !== undefined)
    .join('.');
}

/** Why Kafka would reject this topic name, or undefined if it is valid. */
export function topicNameProblem(topic: string): string | undefined {
  if (!TOPIC_NAME_CHARS.test(topic)) {
    return `topic "${topic}" has characters Kafka does not accept (only letters, digits, ".", "_" and "-"): rename the table or schema (topics follow the current name)`;
  }
  if (topic.length > TOPIC_NAME_MAX) {
    return `topic "${topic}" is longer than Kafka's ${TOPIC_NAME_MAX} characters: use a shorter TOPIC_PREFIX or TOPIC_NAMESPACE, or rename the table`;
  }
  if (topic === '.' || topic === '..') return `topic "${topic}" is not a valid name`;
  return undefined;
}
