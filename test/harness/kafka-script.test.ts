/**
 * `npm run kafka` started in the background stops cleanly when npm is told to stop: npm
 * passes SIGTERM only to the shell it ran the script with, so without help tsx, node and
 * the broker's JVM would keep running. Checked as a user would: the processes, the port
 * and the broker's data folder.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Kafka, logLevel } from 'kafkajs';
import { splitLines } from '../../scripts/kafka-broker.ts';
import { uniqueName, waitFor } from '../helpers.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

interface ProcessInfo {
  pid: number;
  ppid: number;
  pgid: number;
  command: string;
}

/** Every process of the machine, from /proc (Linux). */
function processes(): ProcessInfo[] {
  const found: ProcessInfo[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const command = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').join(' ');
      found.push({
        pid: Number(name),
        ppid: Number(fields[1]),
        pgid: Number(fields[2]),
        command,
      });
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

function descendantsOf(pid: number, all: ProcessInfo[]): ProcessInfo[] {
  const children = all.filter((p) => p.ppid === pid);
  return children.flatMap((c) => [c, ...descendantsOf(c.pid, all)]);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Whether something accepts TCP connections on 127.0.0.1:port. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => {
      resolve(false);
    });
  });
}

test(
  'npm run kafka in the background: SIGTERM to npm stops the JVM and removes its data',
  { timeout: 180_000 },
  async () => {
    if (process.platform !== 'linux') assert.fail('this test reads /proc: run it on Linux');
    const npm = spawn('npm', ['run', 'kafka'], {
      cwd: ROOT,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const npmPid = npm.pid;
    assert.ok(npmPid !== undefined, 'npm started');
    const output: string[] = [];
    let dataDir: string | undefined;
    splitLines(npm.stdout, (line) => output.push(line));
    splitLines(npm.stderr, (line) => output.push(line));
    try {
      const brokers = await waitFor(
        'the broker address',
        () => output.map((l) => /KAFKA_BROKERS=(\S+)/.exec(l)?.[1]).find(Boolean),
        150_000,
        200,
      );
      const port = Number(brokers.split(':')[1]);
      const admin = new Kafka({
        clientId: uniqueName('kafka-script'),
        brokers: [brokers],
        logLevel: logLevel.NOTHING,
      }).admin();
      await admin.connect();
      const cluster = await admin.describeCluster();
      await admin.disconnect();
      assert.equal(cluster.brokers.length, 1, 'the broker answers');

      const tree = descendantsOf(npmPid, processes());
      const jvm = tree.find((p) => p.command.includes('kafka.Kafka'));
      assert.ok(jvm, `a JVM under npm:\n${tree.map((p) => p.command).join('\n')}`);
      dataDir = /(\S+)\/config\/server\.properties/.exec(jvm.command)?.[1];
      assert.ok(dataDir !== undefined && existsSync(dataDir), `data dir of ${jvm.command}`);

      const signalled = Date.now();
      process.kill(npmPid, 'SIGTERM');
      await waitFor(
        'the JVM, tsx and node to exit',
        () => tree.every((p) => !isAlive(p.pid)),
        10_000,
        100,
      ).catch(() => {
        const left = tree.filter((p) => isAlive(p.pid)).map((p) => `${p.pid} ${p.command}`);
        assert.fail(`still running 10 s after SIGTERM to npm:\n${left.join('\n')}`);
      });
      const stoppedMs = Date.now() - signalled;
      assert.equal(await listening(port), false, `port ${port} is free`);
      assert.equal(existsSync(dataDir), false, `${dataDir} is removed`);
      assert.ok(stoppedMs < 10_000, `stopped in ${stoppedMs} ms`);
    } finally {
      // Whatever is left of the group (the test failed): gone, so nothing outlives the run.
      try {
        process.kill(-npmPid, 'SIGKILL');
      } catch {
        // nothing left
      }
      if (dataDir !== undefined) rmSync(dataDir, { recursive: true, force: true });
    }
  },
);
