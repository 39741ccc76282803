/**
 * `npm run kafka`: starts the local test broker and keeps it running until ^C, for trying
 * pg2kafka by hand (`KAFKA_BROKERS=<printed address> pg2kafka relay`).
 * `npm run kafka -- resolve` only fetches the broker runtime into the cache.
 */
import { KafkaBroker, resolveKafkaRuntime } from './kafka-broker.ts';

async function main(): Promise<void> {
  if (process.argv[2] === 'resolve') {
    const runtime = await resolveKafkaRuntime();
    process.stdout.write(
      `Kafka ${runtime.version} runtime in ${runtime.libDir} (${runtime.fromCache ? 'cached' : `resolved in ${runtime.resolveMs} ms`})\n`,
    );
    return;
  }
  const broker = await KafkaBroker.start();
  process.stdout.write(
    `Kafka ${broker.runtime.version} is running. Use it with:\n  KAFKA_BROKERS=${broker.brokers}\nPress Ctrl-C to stop it (its data is removed).\n`,
  );
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await broker.destroy();
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
