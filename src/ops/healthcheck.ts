/**
 * The container image's HEALTHCHECK: `node dist/src/ops/healthcheck.js` asks the relay in
 * the same container for /healthz on HTTP_HOST (default 127.0.0.1) and HTTP_PORT (default
 * 9898) and exits 0 if it answered 200, 1 otherwise, with one line saying why. It reads
 * only those two variables, so it starts in about 50 ms whatever else is configured.
 * With HTTP_PORT=off or 0 there is nothing to ask: it says so and fails, since the relay
 * cannot be known to be alive (run such a container with --no-healthcheck).
 */
import { DEFAULT_HTTP_PORT } from '../config.ts';

const TIMEOUT_MS = 4_000;

/** The /healthz address for these variables, or why there is none. */
export function healthzUrl(env: NodeJS.ProcessEnv): { url: string } | { problem: string } {
  const port = env.HTTP_PORT?.trim().toLowerCase() || String(DEFAULT_HTTP_PORT);
  if (port === 'off' || port === '0') {
    return {
      problem: `HTTP_PORT=${port}: the relay serves no fixed port to probe; run this container with --no-healthcheck, or set HTTP_PORT`,
    };
  }
  const configured = env.HTTP_HOST?.trim();
  // A relay listening on every interface answers on the loopback one.
  const host =
    !configured || configured === '0.0.0.0'
      ? '127.0.0.1'
      : configured === '::'
        ? '::1'
        : configured;
  return { url: `http://${host.includes(':') ? `[${host}]` : host}:${port}/healthz` };
}

async function main(): Promise<number> {
  const target = healthzUrl(process.env);
  if ('problem' in target) {
    process.stdout.write(`${target.problem}\n`);
    return 1;
  }
  try {
    const response = await fetch(target.url, { signal: AbortSignal.timeout(TIMEOUT_MS) });
    const body = (await response.text()).slice(0, 300);
    process.stdout.write(`${target.url}: ${response.status} ${body}\n`);
    return response.status === 200 ? 0 : 1;
  } catch (error) {
    process.stdout.write(
      `${target.url}: ${error instanceof Error ? error.message : String(error)}\n`,
    );
    return 1;
  }
}

if (process.argv[1]?.endsWith('healthcheck.js') || process.argv[1]?.endsWith('healthcheck.ts')) {
  void main().then((code) => {
    process.exitCode = code;
  });
}
