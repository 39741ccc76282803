/**
 * The container image's health check (src/ops/healthcheck.ts): which address it asks, and
 * its exit code against a real HTTP server answering 200, 503, or nothing.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { healthzUrl } from '../../src/ops/healthcheck.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

test('the health check asks the relay of its own container, on HTTP_HOST and HTTP_PORT', () => {
  assert.deepEqual(healthzUrl({}), { url: 'http://127.0.0.1:9898/healthz' });
  assert.deepEqual(healthzUrl({ HTTP_PORT: '8080', HTTP_HOST: '0.0.0.0' }), {
    url: 'http://127.0.0.1:8080/healthz',
  });
  assert.deepEqual(healthzUrl({ HTTP_HOST: '::' }), { url: 'http://[::1]:9898/healthz' });
  assert.deepEqual(healthzUrl({ HTTP_HOST: '10.1.2.3' }), { url: 'http://10.1.2.3:9898/healthz' });
  for (const port of ['off', 'OFF', '0']) {
    const result = healthzUrl({ HTTP_PORT: port });
    assert.ok('problem' in result && result.problem.includes('--no-healthcheck'), port);
  }
});

async function serve(status: number): Promise<{ server: Server; port: number }> {
  const server = createServer((_, response) => {
    response.writeHead(status, { 'content-type': 'application/json' });
    response.end(JSON.stringify({ alive: status === 200 }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port };
}

function check(env: Record<string, string>): Promise<{ code: number | null; out: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/ops/healthcheck.ts'], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  return new Promise((resolve) => {
    child.once('exit', (code) => {
      resolve({ code, out });
    });
  });
}

test('the health check exits 0 on 200, 1 on 503 or no answer, saying what it got', async () => {
  const healthy = await serve(200);
  const stuck = await serve(503);
  try {
    const ok = await check({ HTTP_PORT: String(healthy.port), HTTP_HOST: '' });
    assert.equal(ok.code, 0, ok.out);
    assert.match(ok.out, /200 \{"alive":true\}/);
    const bad = await check({ HTTP_PORT: String(stuck.port), HTTP_HOST: '' });
    assert.equal(bad.code, 1, bad.out);
    assert.match(bad.out, /503/);
  } finally {
    healthy.server.close();
    stuck.server.close();
  }
  const nobody = await check({ HTTP_PORT: String(healthy.port), HTTP_HOST: '' });
  assert.equal(nobody.code, 1, nobody.out);
  assert.match(nobody.out, /fetch failed|ECONNREFUSED/);
  const off = await check({ HTTP_PORT: 'off' });
  assert.equal(off.code, 1);
  assert.match(off.out, /--no-healthcheck/);
});
