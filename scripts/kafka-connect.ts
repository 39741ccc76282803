/**
 * A Kafka Connect standalone worker with Debezium's JDBC sink connector, for tests that
 * replay pg2kafka's change events into a second PostgreSQL database. No Docker: like the
 * test broker (kafka-broker.ts), everything comes from Maven Central into the same cache.
 *
 * Resolved layout, `<cacheDir>/kafka-connect-<kafka version>/`:
 *   libs/                   the worker's class path: connect-runtime, connect-json, log4j2
 *   plugins/debezium-jdbc/  the JDBC sink connector and its own dependencies, as a plugin
 * Each of the two folders is built in a private folder, marked `.complete`, then renamed
 * into place, so an interrupted or concurrent resolve never leaves half a class path.
 *
 * The connector's pom needs two repairs (measured with Debezium 3.6.0.Final):
 * - `org.hibernate:hibernate-agroal` is not published under that group: it is excluded,
 *   and the connector is run with Hibernate's DriverManagerConnectionProvider.
 * - The connector's config still names `org.hibernate.agroal.internal.AgroalConnectionProvider`
 *   as a default, and a class-typed default must load when the config is defined: a stub
 *   of that name (a DriverManagerConnectionProvider) is compiled into the plugin.
 * Jars the worker provides itself (Kafka's APIs, Jackson, slf4j) are removed from the
 * plugin, so the worker's and the plugin's classes never differ.
 *
 * Lifecycle of a `KafkaConnect`: start() writes the worker's files in a temp folder,
 * starts `ConnectStandalone` (under `setpriv --pdeathsig SIGKILL` where available) and
 * waits for its REST API and, if one was given, for the connector's task to run;
 * stop() kills the worker and removes the temp folder.
 */
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { DEFAULT_KAFKA_VERSION, defaultCacheDir, freePort } from './kafka-broker.ts';

export const DEFAULT_DEBEZIUM_VERSION = '3.6.0.Final';
/** The slf4j 1.x binding Connect's published pom leaves out (as for the broker). */
const LOG4J_VERSION = '2.24.3';
export const JDBC_SINK_CONNECTOR_CLASS = 'io.debezium.connector.jdbc.JdbcSinkConnector';
/** Hibernate's connection provider the JDBC sink must be told to use (see the file comment). */
export const JDBC_SINK_CONNECTION_PROVIDER =
  'org.hibernate.engine.jdbc.connections.internal.DriverManagerConnectionProvider';
const AGROAL_STUB_CLASS = 'org.hibernate.agroal.internal.AgroalConnectionProvider';
const PLUGIN_NAME = 'debezium-jdbc';

/** How long the worker may take to serve its REST API and run the connector's task. */
const READY_TIMEOUT_MS = 90_000;
const STOP_TIMEOUT_MS = 10_000;
const POLL_INTERVAL_MS = 200;
const LOG_TAIL_LINES = 60;

export interface ConnectRuntime {
  kafkaVersion: string;
  debeziumVersion: string;
  /** Folder holding every jar of the worker's class path. */
  libDir: string;
  /** The worker's `plugin.path`: one folder per plugin. */
  pluginDir: string;
  /** Milliseconds spent resolving: near zero when the cache already held both parts. */
  resolveMs: number;
  fromCache: boolean;
}

type Coordinates = [group: string, artifact: string, version: string, exclusions?: string[]];

function pomXml(name: string, dependencies: Coordinates[]): string {
  const body = dependencies
    .map(([group, artifact, version, exclusions = []]) => {
      const excluded = exclusions
        .map((ga) => {
          const [g, a] = ga.split(':');
          return `<exclusion><groupId>${g ?? ''}</groupId><artifactId>${a ?? ''}</artifactId></exclusion>`;
        })
        .join('');
      return `    <dependency><groupId>${group}</groupId><artifactId>${artifact}</artifactId><version>${version}</version>${excluded ? `<exclusions>${excluded}</exclusions>` : ''}</dependency>`;
    })
    .join('\n');
  return `<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>pg2kafka.test</groupId>
  <artifactId>${name}</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
${body}
  </dependencies>
</project>
`;
}

const execFileAsync = promisify(execFile);

/** Runs a tool, turning a failure into an error that says what it was for and shows its output. */
async function run(command: string, args: string[], what: string): Promise<void> {
  try {
    await execFileAsync(command, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  } catch (error) {
    const { stdout, stderr, message } = error as Error & { stdout?: string; stderr?: string };
    const output = `${stdout ?? ''}${stderr ?? ''}`.trim().split('\n').slice(-30).join('\n');
    throw new Error(`${what} failed:\n${output || message}`);
  }
}

/** Copies the runtime dependencies of a generated pom into `outDir` with Maven. */
async function mavenCopy(work: string, name: string, deps: Coordinates[], outDir: string) {
  const pom = join(work, `${name}.pom.xml`);
  await writeFile(pom, pomXml(name, deps));
  await run(
    'mvn',
    [
      '-B',
      '-q',
      '-f',
      pom,
      'dependency:copy-dependencies',
      `-DoutputDirectory=${outDir}`,
      '-DincludeScope=runtime',
    ],
    `Maven resolving ${deps.map(([g, a, v]) => `${g}:${a}:${v}`).join(', ')}`,
  );
}

/**
 * Builds `target` (a folder) with `build(out)` in a private folder next to it, marks it
 * complete and renames it into place; a folder already marked complete is reused.
 */
async function buildOnce(
  home: string,
  target: string,
  build: (out: string, work: string) => Promise<void>,
): Promise<boolean> {
  if (existsSync(join(target, '.complete'))) return true;
  await mkdir(home, { recursive: true });
  const work = await mkdtemp(join(home, 'resolve-'));
  try {
    const out = join(work, 'out');
    await mkdir(out);
    await build(out, work);
    await writeFile(join(out, '.complete'), `${new Date().toISOString()}\n`);
    try {
      await rename(out, target);
    } catch (error) {
      // Another process finished first: its copy is as good as ours.
      if (!existsSync(join(target, '.complete'))) throw error;
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return false;
}

/** Jars of the plugin that the worker's class path already has. */
const PROVIDED_BY_WORKER = /^(jackson-.*|connect-api-.*|kafka-clients-.*|slf4j-api-.*)\.jar$/;

async function buildJdbcPlugin(out: string, work: string, debeziumVersion: string) {
  const plugin = join(out, PLUGIN_NAME);
  await mavenCopy(
    work,
    'debezium-jdbc-plugin',
    [
      [
        'io.debezium',
        'debezium-connector-jdbc',
        debeziumVersion,
        ['org.hibernate:hibernate-agroal'],
      ],
    ],
    plugin,
  );
  const jars = await readdir(plugin);
  for (const jar of jars.filter((name) => PROVIDED_BY_WORKER.test(name))) {
    await unlink(join(plugin, jar));
  }
  if (!jars.some((name) => name.startsWith('postgresql-'))) {
    await mavenCopy(
      work,
      'postgresql-driver',
      [['org.postgresql', 'postgresql', '42.7.11']],
      plugin,
    );
  }
  // The stub the connector's config default names (see the file comment).
  const lastDot = AGROAL_STUB_CLASS.lastIndexOf('.');
  const src = join(work, 'stub', `${AGROAL_STUB_CLASS.slice(lastDot + 1)}.java`);
  await mkdir(join(work, 'stub'), { recursive: true });
  await writeFile(
    src,
    `package ${AGROAL_STUB_CLASS.slice(0, lastDot)};\n\n` +
      `/** Stands in for hibernate-agroal, which is not published: pg2kafka tests use ${JDBC_SINK_CONNECTION_PROVIDER}. */\n` +
      `public class ${AGROAL_STUB_CLASS.slice(lastDot + 1)} extends ${JDBC_SINK_CONNECTION_PROVIDER} {}\n`,
  );
  const classes = join(work, 'classes');
  await run(
    'javac',
    ['--release', '17', '-nowarn', '-cp', join(plugin, '*'), '-d', classes, src],
    'javac compiling the hibernate-agroal stub',
  );
  await run(
    'jar',
    ['--create', '--file', join(plugin, 'pg2kafka-agroal-stub.jar'), '-C', classes, '.'],
    'jar packing the hibernate-agroal stub',
  );
}

/**
 * Resolves the Connect worker and the JDBC sink plugin into
 * `<cacheDir>/kafka-connect-<kafkaVersion>/{libs,plugins}`, reusing what a previous run completed.
 */
export async function resolveConnectRuntime(
  kafkaVersion = DEFAULT_KAFKA_VERSION,
  debeziumVersion = DEFAULT_DEBEZIUM_VERSION,
  cacheDir = defaultCacheDir(),
): Promise<ConnectRuntime> {
  const started = Date.now();
  const home = join(cacheDir, `kafka-connect-${kafkaVersion}`);
  const libDir = join(home, 'libs');
  // The plugin's folder names the Debezium version: another one resolves beside it.
  const pluginDir = join(
    home,
    debeziumVersion === DEFAULT_DEBEZIUM_VERSION ? 'plugins' : `plugins-${debeziumVersion}`,
  );
  const missing = [libDir, pluginDir].some((dir) => !existsSync(join(dir, '.complete')));
  if (missing) {
    for (const [tool, probe] of [
      ['mvn', '--version'],
      ['javac', '-version'],
      ['jar', '--version'],
    ] as const) {
      if (spawnSync(tool, [probe], { stdio: 'ignore' }).status !== 0) {
        throw new Error(
          `${tool} is needed to fetch Kafka Connect and the JDBC sink for tests: install maven and openjdk-17-jdk-headless`,
        );
      }
    }
  }
  const libsCached = await buildOnce(home, libDir, (out, work) =>
    mavenCopy(
      work,
      'kafka-connect-worker',
      [
        ['org.apache.kafka', 'connect-runtime', kafkaVersion],
        ['org.apache.kafka', 'connect-json', kafkaVersion],
        ['org.apache.logging.log4j', 'log4j-slf4j-impl', LOG4J_VERSION],
        ['org.apache.logging.log4j', 'log4j-api', LOG4J_VERSION],
        ['org.apache.logging.log4j', 'log4j-core', LOG4J_VERSION],
      ],
      out,
    ),
  );
  const pluginCached = await buildOnce(home, pluginDir, (out, work) =>
    buildJdbcPlugin(out, work, debeziumVersion),
  );
  return {
    kafkaVersion,
    debeziumVersion,
    libDir,
    pluginDir,
    resolveMs: Date.now() - started,
    fromCache: libsCached && pluginCached,
  };
}

/** A task's or the connector's state, as GET /connectors/<name>/status reports it. */
export interface ConnectorState {
  state: 'UNASSIGNED' | 'RUNNING' | 'PAUSED' | 'FAILED' | 'RESTARTING' | 'STOPPED';
  worker_id: string;
  /** The Java stack trace of a FAILED connector or task. */
  trace?: string;
}

export interface ConnectorStatus {
  name: string;
  connector: ConnectorState;
  tasks: Array<ConnectorState & { id: number }>;
  type?: string;
}

/** The connector's failure (its own, or its first failed task's), or undefined when none failed. */
export function failureOf(status: ConnectorStatus): string | undefined {
  if (status.connector.state === 'FAILED') {
    return `connector ${status.name} FAILED:\n${status.connector.trace ?? '(no trace)'}`;
  }
  const task = status.tasks.find((t) => t.state === 'FAILED');
  return task && `task ${status.name}-${task.id} FAILED:\n${task.trace ?? '(no trace)'}`;
}

/** The first line of a Java trace that says what went wrong (Debezium nests its causes). */
export function rootCause(trace: string): string {
  const causes = trace
    .split('\n')
    .filter((line) => /^(Caused by: )?[\w.$]+(Exception|Error)\b/.test(line));
  return (causes.at(-1) ?? trace.split('\n')[0] ?? '').replace(/^Caused by: /, '');
}

const LOG4J2_PROPERTIES = (logFile: string): string => `status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${logFile}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.reflections.name = org.reflections
logger.reflections.level = ERROR
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.hibernate.name = org.hibernate
logger.hibernate.level = WARN
`;

const JVM_OPTIONS = ['-Xms128m', '-Xmx768m', '-XX:+UseSerialGC', '-Djava.awt.headless=true'];

const hasPdeathsig = (): boolean => {
  const probe = spawnSync('setpriv', ['--help'], { encoding: 'utf8' });
  return probe.status === 0 && probe.stdout.includes('--pdeathsig');
};

function properties(entries: Record<string, string>): string {
  // Properties files treat "\" as an escape: Windows-free paths here, but keep it exact.
  return Object.entries(entries)
    .map(([key, value]) => `${key}=${value.replaceAll('\\', '\\\\')}`)
    .join('\n')
    .concat('\n');
}

export interface KafkaConnectOptions {
  /** `host:port[,...]` of the Kafka cluster. */
  brokers: string;
  /**
   * A connector to start with the worker (`name` is required); start() then waits until
   * its task is RUNNING. More can be added later with `addConnector`.
   */
  connector?: Record<string, string>;
  /** Extra or overriding worker properties. */
  worker?: Record<string, string>;
  kafkaVersion?: string;
  debeziumVersion?: string;
  cacheDir?: string;
  /** How long the worker and the connector may take to run (default 90 s). */
  timeoutMs?: number;
}

export class KafkaConnect {
  /** `http://127.0.0.1:<port>` of the worker's REST API. */
  readonly url: string;
  private process: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private exitReason: string | undefined;

  private constructor(
    readonly runtime: ConnectRuntime,
    readonly port: number,
    /** The worker's temp folder: its properties, offsets and `connect.log`. */
    readonly dir: string,
  ) {
    this.url = `http://127.0.0.1:${port}`;
  }

  get logFile(): string {
    return join(this.dir, 'connect.log');
  }

  /** Process id of the worker's JVM (or of setpriv, which execs it). */
  get pid(): number | undefined {
    return this.process?.pid;
  }

  /**
   * Resolves the runtime, starts a standalone worker on a free REST port and waits for it
   * (and for `options.connector`'s task to be RUNNING). Throws, after stopping the worker,
   * with the connector's trace or the worker log's tail if that does not happen in time.
   */
  static async start(options: KafkaConnectOptions): Promise<KafkaConnect> {
    const runtime = await resolveConnectRuntime(
      options.kafkaVersion,
      options.debeziumVersion,
      options.cacheDir,
    );
    const timeoutMs = options.timeoutMs ?? READY_TIMEOUT_MS;
    let connect: KafkaConnect;
    try {
      connect = await KafkaConnect.launched(runtime, options, timeoutMs);
    } catch (first) {
      // The REST port may have been taken between the probe and the bind: once more.
      process.stderr.write(`[connect] start failed, trying again: ${(first as Error).message}\n`);
      connect = await KafkaConnect.launched(runtime, options, timeoutMs);
    }
    if (options.connector) {
      try {
        await connect.waitForRunning(connectorName(options.connector), timeoutMs);
      } catch (error) {
        await connect.stop();
        throw error;
      }
    }
    return connect;
  }

  /** A worker on a new port and temp folder, serving its REST API (or stopped, and an error). */
  private static async launched(
    runtime: ConnectRuntime,
    options: KafkaConnectOptions,
    timeoutMs: number,
  ): Promise<KafkaConnect> {
    const connect = new KafkaConnect(
      runtime,
      await freePort(),
      await mkdtemp(join(tmpdir(), 'pg2kafka-connect-')),
    );
    try {
      await connect.launch(options);
      await connect.waitForRest(timeoutMs);
    } catch (error) {
      await connect.stop();
      throw error;
    }
    return connect;
  }

  private async launch(options: KafkaConnectOptions): Promise<void> {
    const workerFile = join(this.dir, 'worker.properties');
    await writeFile(
      workerFile,
      properties({
        'bootstrap.servers': options.brokers,
        'plugin.path': this.runtime.pluginDir,
        // The default (hybrid_warn) scans every plugin jar's classes: ~27 s.
        'plugin.discovery': 'service_load',
        'key.converter': 'org.apache.kafka.connect.json.JsonConverter',
        'key.converter.schemas.enable': 'true',
        'value.converter': 'org.apache.kafka.connect.json.JsonConverter',
        'value.converter.schemas.enable': 'true',
        'offset.storage.file.filename': join(this.dir, 'offsets'),
        'offset.flush.interval.ms': '1000',
        listeners: this.url,
        ...options.worker,
      }),
    );
    const args = [workerFile];
    if (options.connector) {
      const connectorFile = join(this.dir, 'connector.properties');
      await writeFile(connectorFile, properties(options.connector));
      args.push(connectorFile);
    }
    const log4j = join(this.dir, 'log4j2.properties');
    await writeFile(log4j, LOG4J2_PROPERTIES(this.logFile));
    const javaArgs = [
      ...JVM_OPTIONS,
      '-cp',
      join(this.runtime.libDir, '*'),
      `-Dlog4j2.configurationFile=${log4j}`,
      'org.apache.kafka.connect.cli.ConnectStandalone',
      ...args,
    ];
    const [command, commandArgs] = hasPdeathsig()
      ? ['setpriv', ['--pdeathsig', 'SIGKILL', 'java', ...javaArgs]]
      : ['java', javaArgs];
    // What the JVM itself prints (a missing class, an OutOfMemoryError) lands beside the log.
    const out = openSync(join(this.dir, 'stdout.log'), 'a');
    try {
      const child = spawn(command, commandArgs, { stdio: ['ignore', out, out] });
      this.process = child;
      this.exited = new Promise((resolve) => {
        child.once('exit', (code, signal) => {
          this.exitReason = signal ?? `exit ${String(code)}`;
          this.process = undefined;
          resolve();
        });
        child.once('error', (error) => {
          this.exitReason = `could not start ${command}: ${error.message}`;
          this.process = undefined;
          resolve();
        });
      });
    } finally {
      closeSync(out);
    }
  }

  /** The last lines of the worker's log and of what the JVM printed, for error messages. */
  logTail(lines = LOG_TAIL_LINES): string {
    const tail = (file: string): string[] => {
      try {
        return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines);
      } catch {
        return [];
      }
    };
    const printed = tail(join(this.dir, 'stdout.log'));
    return [
      ...tail(this.logFile),
      ...(printed.length ? ['--- stdout/stderr:', ...printed] : []),
    ].join('\n');
  }

  /**
   * The worker log's last ERROR lines (of every connector: Debezium's config errors do
   * not name theirs, and its trace then only says "check the logs for details").
   */
  logErrors(lines = 15): string {
    let log = '';
    try {
      log = readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
    return log
      .split('\n')
      .filter((line) => line.includes(' ERROR '))
      .slice(-lines)
      .join('\n');
  }

  private taskFailure(failed: string): Error {
    const errors = this.logErrors();
    return new Error(errors ? `${failed}\n--- ERROR lines of the worker log:\n${errors}` : failed);
  }

  private failure(what: string): Error {
    return new Error(
      `Kafka Connect ${what}; the worker log's last lines (${this.logFile}):\n${this.logTail()}`,
    );
  }

  /** Calls the REST API; resolves to the parsed JSON body (undefined for 204). */
  async rest<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await fetch(`${this.url}${path}`, {
      method,
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) {
      throw new Error(`Kafka Connect ${method} ${path}: HTTP ${response.status} ${text}`);
    }
    return (text ? JSON.parse(text) : undefined) as T;
  }

  private async waitForRest(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!this.process) throw this.failure(`exited before it served (${this.exitReason ?? '?'})`);
      try {
        await this.rest('GET', '/');
        return;
      } catch {
        // Not listening yet.
      }
      if (Date.now() > deadline) {
        throw this.failure(`did not serve its REST API within ${timeoutMs / 1000} s`);
      }
      await new Promise((r) => setTimeout(r, POLL_INTERVAL_MS));
    }
  }

  /** GET /connectors/<name>/status, or undefined while the worker does not know it yet. */
  async status(name: string): Promise<ConnectorStatus | undefined> {
    const response = await fetch(`${this.url}/connectors/${encodeURIComponent(name)}/status`);
    if (response.status === 404) return undefined;
    if (!response.ok) {
      throw new Error(
        `Kafka Connect status of ${name}: HTTP ${response.status} ${await response.text()}`,
      );
    }
    return (await response.json()) as ConnectorStatus;
  }

  /** Throws with the trace when the connector or one of its tasks FAILED. */
  async assertHealthy(name: string): Promise<void> {
    const status = await this.status(name);
    const failed = status && failureOf(status);
    if (failed) throw this.taskFailure(failed);
  }

  /**
   * Waits until the connector and all its tasks (at least one) are RUNNING. Throws with
   * the trace as soon as one FAILED, and with the log's tail after `timeoutMs`.
   */
  async waitForRunning(name: string, timeoutMs = READY_TIMEOUT_MS): Promise<ConnectorStatus> {
    const deadline = Date.now() + timeoutMs;
    let last: ConnectorStatus | undefined;
    for (;;) {
      if (!this.process) throw this.failure(`exited (${this.exitReason ?? '?'})`);
      last = await this.status(name).catch(() => undefined);
      if (last) {
        const failed = failureOf(last);
        if (failed) throw this.taskFailure(failed);
        if (
          last.connector.state === 'RUNNING' &&
          last.tasks.length > 0 &&
          last.tasks.every((t) => t.state === 'RUNNING')
        ) {
          return last;
        }
      }
      if (Date.now() > deadline) {
        throw this.failure(
          `connector ${name} was not RUNNING within ${timeoutMs / 1000} s (last status: ${JSON.stringify(last)})`,
        );
      }
      await new Promise((r) => setTimeout(r, POLL_INTERVAL_MS));
    }
  }

  /** Creates (or reconfigures) a connector through the REST API and waits for its task. */
  async addConnector(
    config: Record<string, string>,
    timeoutMs = READY_TIMEOUT_MS,
  ): Promise<ConnectorStatus> {
    const name = connectorName(config);
    await this.rest('PUT', `/connectors/${encodeURIComponent(name)}/config`, config);
    return this.waitForRunning(name, timeoutMs);
  }

  async deleteConnector(name: string): Promise<void> {
    await this.rest('DELETE', `/connectors/${encodeURIComponent(name)}`);
  }

  /** Stops the worker (SIGTERM, SIGKILL after 10 s) and removes its temp folder. */
  async stop(): Promise<void> {
    const child = this.process;
    if (child) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
      await this.exited;
      clearTimeout(timer);
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}

function connectorName(config: Record<string, string>): string {
  const name = config.name;
  if (!name) throw new Error('a connector config needs a "name"');
  return name;
}

/**
 * The JDBC sink's config for a PostgreSQL URL (`postgres://user[:password]@host:port/db`):
 * the connection, Hibernate's connection provider, and the given settings on top.
 */
export function jdbcSinkConfig(
  name: string,
  databaseUrl: string,
  settings: Record<string, string>,
): Record<string, string> {
  const url = new URL(databaseUrl);
  return {
    name,
    'connector.class': JDBC_SINK_CONNECTOR_CLASS,
    'tasks.max': '1',
    'connection.url': `jdbc:postgresql://${url.hostname}:${url.port || '5432'}${url.pathname}`,
    'connection.username': decodeURIComponent(url.username),
    'connection.password': decodeURIComponent(url.password),
    'connection.provider': JDBC_SINK_CONNECTION_PROVIDER,
    ...settings,
  };
}
