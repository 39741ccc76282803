/**
 * A real Apache Kafka broker for tests and the demo, without Docker.
 *
 * The broker runtime comes from Maven Central (`org.apache.kafka:kafka_2.13` pulls the
 * whole broker in transitively). Kafka leaves its logging backend out of the published
 * dependencies, so the generated pom adds one that matches the major version; without
 * it every broker log line, including the readiness line we wait for, is lost.
 *
 * Lifecycle of a `KafkaBroker`:
 *   stopped --start()--> starting --"Kafka Server started"--> running
 *   running --stop()--> stopped (data kept; start() again reuses ports and data)
 *   running --kill()--> stopped (SIGKILL, to simulate a crash)
 *   any     --destroy()--> gone (process stopped, data dir removed)
 *
 * The Java process is started under `setpriv --pdeathsig SIGKILL` where available, so a
 * broker never outlives the Node process that started it, even when that one is killed.
 *
 * Client listeners, by option: PLAINTEXT (default), SASL_PLAINTEXT with SASL/PLAIN users
 * (`saslUsers`), or SASL_SSL with SCRAM users and a certificate made with keytool
 * (`saslSsl`, see `BrokerTls`). The controller listener is always PLAINTEXT.
 */
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

export const DEFAULT_KAFKA_VERSION = '4.1.2';

/** How long a broker may take to print its readiness line before we give up. */
const READY_TIMEOUT_MS = 90_000;
/** How long a SIGTERM may take before SIGKILL follows. */
const STOP_TIMEOUT_MS = 30_000;
const LOG_TAIL_LINES = 60;
const READY_LINE = 'Kafka Server started';

export interface KafkaRuntime {
  version: string;
  /** Folder holding every jar of the broker's class path. */
  libDir: string;
  /** Milliseconds spent resolving: near zero when the cache already held it. */
  resolveMs: number;
  fromCache: boolean;
}

/** Where resolved runtimes are kept: outside any clone, so every checkout reuses them. */
export function defaultCacheDir(): string {
  const base = process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache');
  return join(base, 'pg2kafka');
}

function kafkaVersionFromEnv(): string {
  const version = process.env.KAFKA_VERSION ?? DEFAULT_KAFKA_VERSION;
  if (!/^[34]\.\d+\.\d+$/.test(version)) {
    throw new Error(`KAFKA_VERSION must look like 4.1.2 or 3.9.2, got "${version}"`);
  }
  return version;
}

/** The logging backend Kafka's published pom leaves out, per major version. */
function loggingDependencies(version: string): Array<[group: string, artifact: string, v: string]> {
  if (version.startsWith('3.')) {
    return [
      ['org.slf4j', 'slf4j-reload4j', '1.7.36'],
      ['ch.qos.reload4j', 'reload4j', '1.2.25'],
    ];
  }
  return [
    ['org.apache.logging.log4j', 'log4j-slf4j-impl', '2.24.3'],
    ['org.apache.logging.log4j', 'log4j-api', '2.24.3'],
    ['org.apache.logging.log4j', 'log4j-core', '2.24.3'],
  ];
}

function pomFor(version: string): string {
  const deps = [['org.apache.kafka', 'kafka_2.13', version], ...loggingDependencies(version)]
    .map(
      ([g, a, v]) =>
        `    <dependency><groupId>${g}</groupId><artifactId>${a}</artifactId><version>${v}</version></dependency>`,
    )
    .join('\n');
  return `<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>pg2kafka.test</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>${version}</version>
  <packaging>pom</packaging>
  <dependencies>
${deps}
  </dependencies>
</project>
`;
}

/**
 * Resolves the broker runtime into `<cacheDir>/kafka-<version>/libs`, reusing it when a
 * previous run completed. Maven writes into a private folder that is renamed into place
 * only once complete, so an interrupted or concurrent resolve never leaves half a class path.
 */
export async function resolveKafkaRuntime(
  version = kafkaVersionFromEnv(),
  cacheDir = defaultCacheDir(),
): Promise<KafkaRuntime> {
  const home = join(cacheDir, `kafka-${version}`);
  const libDir = join(home, 'libs');
  const started = Date.now();
  if (existsSync(join(libDir, '.complete'))) {
    return { version, libDir, resolveMs: Date.now() - started, fromCache: true };
  }
  if (spawnSync('mvn', ['--version'], { stdio: 'ignore' }).status !== 0) {
    throw new Error(
      'Maven (mvn) is needed to fetch the Kafka broker for tests: install it (apt-get install maven openjdk-17-jre-headless) or set KAFKA_BROKERS to a running broker',
    );
  }
  await mkdir(home, { recursive: true });
  const work = await mkdtemp(join(home, 'resolve-'));
  try {
    await writeFile(join(work, 'pom.xml'), pomFor(version));
    const out = join(work, 'libs');
    const result = spawnSync(
      'mvn',
      [
        '-B',
        '-q',
        '-f',
        join(work, 'pom.xml'),
        'dependency:copy-dependencies',
        `-DoutputDirectory=${out}`,
        '-DincludeScope=runtime',
      ],
      { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 },
    );
    if (result.status !== 0) {
      const output = `${result.stdout}${result.stderr}`.trim().split('\n').slice(-30).join('\n');
      throw new Error(`Maven could not resolve the Kafka ${version} broker runtime:\n${output}`);
    }
    await writeFile(join(out, '.complete'), `${new Date().toISOString()}\n`);
    try {
      await rename(out, libDir);
    } catch (error) {
      // Another process finished first: its copy is as good as ours.
      if (!existsSync(join(libDir, '.complete'))) throw error;
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return { version, libDir, resolveMs: Date.now() - started, fromCache: false };
}

/** A port nobody listens on right now, picked by the kernel. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => {
        if (address !== null && typeof address === 'object') resolve(address.port);
        else reject(new Error('could not read the port of a probe socket'));
      });
    });
  });
}

/**
 * Kafka's cluster ids are 16 random bytes in URL-safe base64 without padding. One that
 * starts with "-" would be read as an option by the format tool (1 start in 32 failed
 * with "argument --cluster-id/-t: expected one argument"), so draw again.
 */
function newClusterId(): string {
  for (;;) {
    const id = randomBytes(16).toString('base64url');
    if (!id.startsWith('-')) return id;
  }
}

/** SASL/PLAIN users (name -> password) for a broker that requires authentication. */
export type SaslUsers = Record<string, string>;

export type ScramMechanism = 'SCRAM-SHA-256' | 'SCRAM-SHA-512';

/** A user of a SASL_SSL broker, known to it with one SCRAM mechanism. */
export interface ScramUser {
  mechanism: ScramMechanism;
  username: string;
  password: string;
}

/** A SASL_SSL client listener: SCRAM users, and a server certificate made with keytool. */
export interface SaslSslOptions {
  /** Created with the storage (`kafka-storage format --add-scram`), before the broker starts. */
  scramUsers: ScramUser[];
}

/**
 * The certificates of a SASL_SSL broker, made with keytool in its data folder, as PEM
 * files for clients.
 */
export interface BrokerTls {
  /** The CA that signed the broker's certificates: the one a client should trust. */
  caFile: string;
  /** A CA of its own, unrelated to the broker: trusting only it must fail. */
  otherCaFile: string;
  /**
   * `host:port` of a second SASL_SSL listener (same users, same CA) whose certificate
   * names only `mismatchHostName`, never 127.0.0.1: a client that checks host names
   * must refuse it.
   */
  mismatchBrokers: string;
  mismatchHostName: string;
}

/** A listener of the broker as configured: name, security protocol, `host:port`. */
export interface BrokerListener {
  name: string;
  protocol: string;
  address: string;
}

const INTER_BROKER_USER = ['pg2kafka-broker', 'inter-broker-secret'] as const;
/** SCRAM mechanism of the broker's own connections on its SASL_SSL listener. */
const INTER_BROKER_SCRAM: ScramMechanism = 'SCRAM-SHA-512';
const MISMATCH_LISTENER = 'MISMATCH';
const MISMATCH_HOST_NAME = 'kafka.pg2kafka.invalid';
/** How long keytool's certificates are valid, in days (a broker lives for one test run). */
const CERT_VALIDITY_DAYS = '7';

/** What a SASL_SSL broker needs besides its options: ports, files and its own secrets. */
interface SaslSslSetup {
  scramUsers: ScramUser[];
  mismatchPort: number;
  tlsDir: string;
  /** Of every keystore keytool writes (PKCS12: also of their keys). */
  storePassword: string;
  /** The broker's own SCRAM user's password (for inter-broker connections). */
  interBrokerPassword: string;
}

/** `--add-scram` splits its argument on "," and "=": keep names and passwords plain. */
function checkScramUser(user: ScramUser): void {
  for (const [what, value] of [
    ['user name', user.username],
    ['password', user.password],
  ] as const) {
    if (!/^[A-Za-z0-9._-]+$/.test(value)) {
      throw new Error(
        `a SCRAM ${what} for the test broker may use only letters, digits, ".", "_" and "-"`,
      );
    }
  }
}

function listenersOf(
  port: number,
  saslUsers: SaslUsers | undefined,
  saslSsl: SaslSslSetup | undefined,
): BrokerListener[] {
  if (saslSsl) {
    return [
      { name: 'SASL_SSL', protocol: 'SASL_SSL', address: `127.0.0.1:${port}` },
      {
        name: MISMATCH_LISTENER,
        protocol: 'SASL_SSL',
        address: `127.0.0.1:${saslSsl.mismatchPort}`,
      },
    ];
  }
  const protocol = saslUsers ? 'SASL_PLAINTEXT' : 'PLAINTEXT';
  return [{ name: protocol, protocol, address: `127.0.0.1:${port}` }];
}

function saslPlainProperties(saslUsers: SaslUsers): string[] {
  return [
    'sasl.enabled.mechanisms=PLAIN',
    'sasl.mechanism.inter.broker.protocol=PLAIN',
    `listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required ` +
      `username="${INTER_BROKER_USER[0]}" password="${INTER_BROKER_USER[1]}" ` +
      Object.entries({ ...saslUsers, [INTER_BROKER_USER[0]]: INTER_BROKER_USER[1] })
        .map(([user, password]) => `user_${user}="${password}"`)
        .join(' ') +
      ';',
  ];
}

/**
 * SCRAM on both SASL_SSL listeners (the credentials live in the cluster metadata; the
 * server side needs only the login module), the broker's own SCRAM-SHA-512 login for
 * inter-broker traffic, and per listener its keystore; both trust the test CA.
 */
function saslSslProperties(setup: SaslSslSetup): string[] {
  const scram = 'org.apache.kafka.common.security.scram.ScramLoginModule required';
  const store = (name: string): string => join(setup.tlsDir, name);
  const mechanisms: ScramMechanism[] = ['SCRAM-SHA-256', 'SCRAM-SHA-512'];
  const jaas = (listener: string): string[] =>
    mechanisms.map((mechanism) => {
      const login =
        listener === 'sasl_ssl' && mechanism === INTER_BROKER_SCRAM
          ? ` username="${INTER_BROKER_USER[0]}" password="${setup.interBrokerPassword}"`
          : '';
      return `listener.name.${listener}.${mechanism.toLowerCase()}.sasl.jaas.config=${scram}${login};`;
    });
  const mismatch = MISMATCH_LISTENER.toLowerCase();
  return [
    `sasl.enabled.mechanisms=${mechanisms.join(',')}`,
    `sasl.mechanism.inter.broker.protocol=${INTER_BROKER_SCRAM}`,
    ...jaas('sasl_ssl'),
    ...jaas(mismatch),
    'ssl.client.auth=none',
    'ssl.keystore.type=PKCS12',
    `ssl.keystore.location=${store('server.p12')}`,
    `ssl.keystore.password=${setup.storePassword}`,
    `ssl.key.password=${setup.storePassword}`,
    `listener.name.${mismatch}.ssl.keystore.location=${store('mismatch.p12')}`,
    `listener.name.${mismatch}.ssl.keystore.password=${setup.storePassword}`,
    `listener.name.${mismatch}.ssl.key.password=${setup.storePassword}`,
    'ssl.truststore.type=PEM',
    `ssl.truststore.location=${store('ca.pem')}`,
  ];
}

/**
 * KRaft's own authorizer: what no ACL allows is denied. Super users are the broker itself,
 * ANONYMOUS (the controller listener is PLAINTEXT, so the node's controller connections
 * have no other principal) and the given users.
 */
function authorizerProperties(superUsers: readonly string[]): string[] {
  const principals = ['ANONYMOUS', INTER_BROKER_USER[0], ...superUsers].map((u) => `User:${u}`);
  return [
    'authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer',
    `super.users=${principals.join(';')}`,
    'allow.everyone.if.no.acl.found=false',
  ];
}

function serverProperties(
  port: number,
  controllerPort: number,
  dataDir: string,
  saslUsers: SaslUsers | undefined,
  saslSsl: SaslSslSetup | undefined,
  superUsers: readonly string[] | undefined,
): string {
  const listeners = listenersOf(port, saslUsers, saslSsl);
  const [interBroker] = listeners;
  const security = saslSsl
    ? saslSslProperties(saslSsl)
    : saslUsers
      ? saslPlainProperties(saslUsers)
      : [];
  const endpoints = listeners.map((l) => `${l.name}://${l.address}`).join(',');
  return [
    'process.roles=broker,controller',
    'node.id=1',
    `controller.quorum.voters=1@127.0.0.1:${controllerPort}`,
    `listeners=${endpoints},CONTROLLER://127.0.0.1:${controllerPort}`,
    `advertised.listeners=${endpoints}`,
    'controller.listener.names=CONTROLLER',
    `inter.broker.listener.name=${interBroker?.name ?? 'PLAINTEXT'}`,
    `listener.security.protocol.map=CONTROLLER:PLAINTEXT,${listeners.map((l) => `${l.name}:${l.protocol}`).join(',')}`,
    ...security,
    ...(superUsers ? authorizerProperties(superUsers) : []),
    `log.dirs=${join(dataDir, 'logs')}`,
    'num.partitions=1',
    // Topics are created by the code under test (or its tests), as on real clusters.
    'auto.create.topics.enable=false',
    'offsets.topic.replication.factor=1',
    'offsets.topic.num.partitions=4',
    'transaction.state.log.replication.factor=1',
    'transaction.state.log.min.isr=1',
    'share.coordinator.state.topic.replication.factor=1',
    'share.coordinator.state.topic.min.isr=1',
    'group.initial.rebalance.delay.ms=0',
    // Kafka 4 rejects records stamped more than an hour ahead; tests set timestamps.
    'log.message.timestamp.after.max.ms=9223372036854775807',
    '',
  ].join('\n');
}

const execFileAsync = promisify(execFile);

/** keytool's JVM, tuned to start fast: it runs for a fraction of a second. */
const KEYTOOL_JVM = ['-J-XX:TieredStopAtLevel=1', '-J-XX:+UseSerialGC', '-J-XX:-UsePerfData'];

async function keytool(args: string[]): Promise<void> {
  try {
    await execFileAsync('keytool', [...KEYTOOL_JVM, ...args], { encoding: 'utf8' });
  } catch (error) {
    const { stdout, stderr, message } = error as Error & { stdout?: string; stderr?: string };
    const output = `${stdout ?? ''}${stderr ?? ''}`.trim() || message;
    throw new Error(
      `keytool ${args[0] ?? ''} failed (Java's keytool makes the test broker's certificates): ${output}`,
    );
  }
}

/**
 * Makes, in `dir`: a test CA (ca.p12, ca.pem); a server certificate for 127.0.0.1 and
 * localhost signed by it (server.p12), and one for MISMATCH_HOST_NAME only (mismatch.p12);
 * and an unrelated CA (other-ca.pem). The broker trusts ca.pem itself (a PEM truststore).
 * Independent keytool runs go side by side: each is a JVM start.
 */
async function makeCertificates(dir: string, storePassword: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const file = (name: string): string => join(dir, name);
  const store = (name: string): string[] => [
    '-keystore',
    file(name),
    '-storetype',
    'PKCS12',
    '-storepass',
    storePassword,
  ];
  const keyPair = (p12: string, alias: string, dname: string, ext: string[]): Promise<void> =>
    keytool([
      '-genkeypair',
      '-alias',
      alias,
      // EC keys: quick to make, and every client here (Node, librdkafka, Java) takes them.
      '-keyalg',
      'EC',
      '-groupname',
      'secp256r1',
      '-dname',
      dname,
      '-validity',
      CERT_VALIDITY_DAYS,
      ...ext,
      ...store(p12),
    ]);
  const caExt = ['-ext', 'bc:c=ca:true', '-ext', 'ku:c=keyCertSign,cRLSign'];
  const exportPem = (p12: string, alias: string, pem: string): Promise<void> =>
    keytool(['-exportcert', '-rfc', '-alias', alias, '-file', file(pem), ...store(p12)]);
  const importCert = (p12: string, alias: string, pem: string): Promise<void> =>
    keytool(['-importcert', '-noprompt', '-alias', alias, '-file', file(pem), ...store(p12)]);
  const server = [
    { p12: 'server.p12', dname: 'CN=127.0.0.1', san: 'ip:127.0.0.1,dns:localhost' },
    {
      p12: 'mismatch.p12',
      dname: `CN=${MISMATCH_HOST_NAME}`,
      san: `dns:${MISMATCH_HOST_NAME}`,
    },
  ];

  await Promise.all([
    keyPair('ca.p12', 'ca', 'CN=pg2kafka test CA', caExt),
    keyPair('other-ca.p12', 'ca', 'CN=pg2kafka unrelated test CA', caExt),
    ...server.map((s) => keyPair(s.p12, 'server', s.dname, [])),
  ]);
  await Promise.all([
    exportPem('ca.p12', 'ca', 'ca.pem'),
    exportPem('other-ca.p12', 'ca', 'other-ca.pem'),
    ...server.map((s) =>
      keytool(['-certreq', '-alias', 'server', '-file', file(`${s.p12}.csr`), ...store(s.p12)]),
    ),
  ]);
  await Promise.all(
    server.flatMap((s) => [
      // The CA first: keytool then stores the signed certificate with its chain.
      importCert(s.p12, 'ca', 'ca.pem'),
      keytool([
        '-gencert',
        '-rfc',
        '-alias',
        'ca',
        '-infile',
        file(`${s.p12}.csr`),
        '-outfile',
        file(`${s.p12}.pem`),
        '-validity',
        CERT_VALIDITY_DAYS,
        '-ext',
        `san=${s.san}`,
        '-ext',
        'ku:c=digitalSignature,keyEncipherment',
        '-ext',
        'eku=serverAuth,clientAuth',
        ...store('ca.p12'),
      ]),
    ]),
  );
  await Promise.all(server.map((s) => importCert(s.p12, 'server', `${s.p12}.pem`)));
}

const LOG4J2_PROPERTIES = `status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
`;

const LOG4J1_PROPERTIES = `log4j.rootLogger=INFO, out
log4j.appender.out=org.apache.log4j.ConsoleAppender
log4j.appender.out.layout=org.apache.log4j.PatternLayout
log4j.appender.out.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.state.change.logger=WARN
`;

const JVM_OPTIONS = [
  '-Xms256m',
  '-Xmx1g',
  '-XX:+UseG1GC',
  '-XX:MaxGCPauseMillis=20',
  '-Djava.awt.headless=true',
];

const hasPdeathsig = (() => {
  const probe = spawnSync('setpriv', ['--help'], { encoding: 'utf8' });
  return probe.status === 0 && probe.stdout.includes('--pdeathsig');
})();

export interface KafkaBrokerOptions {
  version?: string;
  cacheDir?: string;
  /** Receives every broker log line (default: kept only in the tail shown on failure). */
  onLogLine?: (line: string) => void;
  /** Require SASL/PLAIN authentication on the client listener, with these users. */
  saslUsers?: SaslUsers;
  /**
   * Serve clients over SASL_SSL only, with SCRAM users and certificates made with
   * keytool (see `KafkaBroker.tls`). Not together with `saslUsers`.
   */
  saslSsl?: SaslSslOptions;
  /**
   * With `saslUsers`: an authorizer denies what no ACL allows, and these users (besides
   * the broker itself) may do anything, such as create the ACLs of the others.
   */
  superUsers?: string[];
}

export class KafkaBroker {
  /** `host:port` of the client listener, stable across stop()/start(). */
  readonly brokers: string;
  /** The client listeners (not the controller's), as configured. */
  readonly listeners: readonly BrokerListener[];
  /** With `saslSsl`: the certificates, as PEM files for clients. */
  readonly tls: BrokerTls | undefined;
  private process: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private readonly tail: string[] = [];
  private readonly configDir: string;

  private constructor(
    readonly runtime: KafkaRuntime,
    readonly port: number,
    readonly controllerPort: number,
    readonly dataDir: string,
    private readonly onLogLine: ((line: string) => void) | undefined,
    private readonly saslUsers: SaslUsers | undefined,
    private readonly saslSsl: SaslSslSetup | undefined,
    private readonly superUsers: readonly string[] | undefined,
  ) {
    this.brokers = `127.0.0.1:${port}`;
    this.configDir = join(dataDir, 'config');
    this.listeners = listenersOf(port, saslUsers, saslSsl);
    this.tls = saslSsl && {
      caFile: join(saslSsl.tlsDir, 'ca.pem'),
      otherCaFile: join(saslSsl.tlsDir, 'other-ca.pem'),
      mismatchBrokers: `127.0.0.1:${saslSsl.mismatchPort}`,
      mismatchHostName: MISMATCH_HOST_NAME,
    };
  }

  /**
   * Resolves the runtime, formats fresh storage on free ports, starts and waits for ready.
   * A failed attempt (a port taken between probe and bind, a JVM that died) is retried
   * once on new ports, with the first failure's output kept in the error if both fail.
   */
  static async start(options: KafkaBrokerOptions = {}): Promise<KafkaBroker> {
    if (options.saslUsers && options.saslSsl) {
      throw new Error('a test broker takes saslUsers (SASL_PLAINTEXT) or saslSsl, not both');
    }
    if (options.superUsers && !options.saslUsers) {
      throw new Error('a test broker with superUsers needs saslUsers: ACLs name SASL users');
    }
    options.saslSsl?.scramUsers.forEach(checkScramUser);
    const runtime = await resolveKafkaRuntime(
      options.version ?? kafkaVersionFromEnv(),
      options.cacheDir,
    );
    try {
      return await KafkaBroker.startOnce(runtime, options);
    } catch (first) {
      process.stderr.write(`[kafka] start failed, trying again: ${(first as Error).message}\n`);
      return KafkaBroker.startOnce(runtime, options);
    }
  }

  private static async startOnce(
    runtime: KafkaRuntime,
    options: KafkaBrokerOptions,
  ): Promise<KafkaBroker> {
    const taken = new Set<number>();
    const newPort = async (): Promise<number> => {
      let port = await freePort();
      while (taken.has(port)) port = await freePort();
      taken.add(port);
      return port;
    };
    const port = await newPort();
    const controllerPort = await newPort();
    const dataDir = await mkdtemp(join(tmpdir(), 'pg2kafka-kafka-'));
    const saslSsl: SaslSslSetup | undefined = options.saslSsl && {
      scramUsers: options.saslSsl.scramUsers,
      mismatchPort: await newPort(),
      tlsDir: join(dataDir, 'tls'),
      storePassword: randomBytes(12).toString('hex'),
      interBrokerPassword: randomBytes(12).toString('hex'),
    };
    const broker = new KafkaBroker(
      runtime,
      port,
      controllerPort,
      dataDir,
      options.onLogLine,
      options.saslUsers,
      saslSsl,
      options.superUsers,
    );
    try {
      await broker.format();
      await broker.start();
    } catch (error) {
      await broker.destroy();
      throw error;
    }
    return broker;
  }

  get running(): boolean {
    return this.process !== undefined;
  }

  /** Process id of the running broker's JVM. */
  get pid(): number | undefined {
    return this.process?.pid;
  }

  /** The last broker log lines, for error messages. */
  logTail(): string {
    return this.tail.join('\n');
  }

  private async format(): Promise<void> {
    await mkdir(this.configDir, { recursive: true });
    const props = join(this.configDir, 'server.properties');
    await writeFile(
      props,
      serverProperties(
        this.port,
        this.controllerPort,
        this.dataDir,
        this.saslUsers,
        this.saslSsl,
        this.superUsers,
      ),
    );
    await writeFile(join(this.configDir, 'log4j2.properties'), LOG4J2_PROPERTIES);
    await writeFile(join(this.configDir, 'log4j.properties'), LOG4J1_PROPERTIES);
    const scram: string[] = [];
    if (this.saslSsl) {
      await makeCertificates(this.saslSsl.tlsDir, this.saslSsl.storePassword);
      const users: ScramUser[] = [
        ...this.saslSsl.scramUsers,
        {
          mechanism: INTER_BROKER_SCRAM,
          username: INTER_BROKER_USER[0],
          password: this.saslSsl.interBrokerPassword,
        },
      ];
      for (const { mechanism, username, password } of users) {
        scram.push('--add-scram', `${mechanism}=[name=${username},password=${password}]`);
      }
    }
    const result = spawnSync(
      'java',
      [
        ...this.javaOptions(),
        'kafka.tools.StorageTool',
        'format',
        '-t',
        newClusterId(),
        '-c',
        props,
        ...scram,
      ],
      { encoding: 'utf8' },
    );
    if (result.status !== 0) {
      throw new Error(
        `formatting Kafka storage failed (exit ${String(result.status)}):\n${result.stdout}${result.stderr}`,
      );
    }
  }

  private javaOptions(): string[] {
    return [
      '-cp',
      join(this.runtime.libDir, '*'),
      `-Dlog4j2.configurationFile=${join(this.configDir, 'log4j2.properties')}`,
      `-Dlog4j.configuration=file:${join(this.configDir, 'log4j.properties')}`,
    ];
  }

  /** Starts the broker on its ports with its data, and waits until it serves. */
  async start(): Promise<void> {
    if (this.process) throw new Error('the Kafka broker is already running');
    const javaArgs = [
      ...JVM_OPTIONS,
      ...this.javaOptions(),
      'kafka.Kafka',
      join(this.configDir, 'server.properties'),
    ];
    const [command, args] = hasPdeathsig
      ? ['setpriv', ['--pdeathsig', 'SIGKILL', 'java', ...javaArgs]]
      : ['java', javaArgs];
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.process = child;
    this.exited = new Promise((resolve) =>
      child.once('exit', () => {
        resolve();
      }),
    );

    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new Error(
            `the Kafka broker did not start within ${READY_TIMEOUT_MS / 1000} s; its last lines:\n${this.logTail()}`,
          ),
        );
      }, READY_TIMEOUT_MS);
      const onLine = (line: string): void => {
        this.tail.push(line);
        if (this.tail.length > LOG_TAIL_LINES) this.tail.shift();
        this.onLogLine?.(line);
        if (line.includes(READY_LINE)) {
          clearTimeout(timer);
          resolve();
        }
      };
      splitLines(child.stdout, onLine);
      splitLines(child.stderr, onLine);
      child.once('error', (error) => {
        clearTimeout(timer);
        reject(new Error(`could not start java for the Kafka broker: ${error.message}`));
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        this.process = undefined;
        reject(
          new Error(
            `the Kafka broker exited before it was ready (${signal ?? `exit ${String(code)}`}); its last lines:\n${this.logTail()}`,
          ),
        );
      });
    });
    try {
      await ready;
    } catch (error) {
      await this.kill();
      throw error;
    }
  }

  /** Stops the broker cleanly (SIGTERM, then SIGKILL after a timeout); data is kept. */
  async stop(): Promise<void> {
    const child = this.process;
    if (!child) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await this.exited;
    clearTimeout(timer);
    this.process = undefined;
  }

  /** Kills the broker at once, as a crash would; data is kept. */
  async kill(): Promise<void> {
    const child = this.process;
    if (!child) return;
    child.kill('SIGKILL');
    await this.exited;
    this.process = undefined;
  }

  /** Stops the broker and removes its data. */
  async destroy(): Promise<void> {
    await this.stop();
    await rm(this.dataDir, { recursive: true, force: true });
  }
}

/** Calls `onLine` with each complete line the stream produces. */
export function splitLines(
  stream: NodeJS.ReadableStream | null,
  onLine: (line: string) => void,
): void {
  if (!stream) return;
  let buffered = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    buffered += chunk;
    let newline = buffered.indexOf('\n');
    while (newline >= 0) {
      onLine(buffered.slice(0, newline));
      buffered = buffered.slice(newline + 1);
      newline = buffered.indexOf('\n');
    }
  });
}
