/**
 * `npm run image`: builds the relay's container image from the Dockerfile with podman, where
 * no Docker engine runs, and prints its tag and size. test/container uses the same steps.
 *
 * - podman and runc (and mmdebstrap for the stand-in) come from Debian's packages, installed
 *   when missing (as root).
 *   podman runs with `--runtime runc --cgroup-manager cgroupfs` and a containers.conf
 *   without default ulimits: what this kind of machine's kernel needs (PODMAN_FLAGS
 *   replaces the first two).
 * - The base image is the Dockerfile's, `node:20-bookworm-slim`, when it is in podman's
 *   storage or can be pulled. Otherwise a stand-in is built from Debian's packages
 *   (mmdebstrap, minbase) with this machine's Node 20 in /usr/local, a `node` user with
 *   uid 1000 and npm trusting this machine's CA bundle, like the official image; its root
 *   file system and the stand-in itself are cached between runs (~/.cache/pg2kafka).
 * - PG2KAFKA_IMAGE (default localhost/pg2kafka:latest) names the image built; the image it
 *   replaces is removed (the build stage's layers stay in podman's cache).
 * - On the stand-in, the final image inherits what the stand-in adds to Debian: Node in
 *   /usr/local (as the official image has it), the `node` user, and this machine's CA
 *   bundle with NPM_CONFIG_CAFILE pointing at it (which only npm reads; the relay does not
 *   run npm). An image built on the official base has none of the last two.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  realpathSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CACHE = join(homedir(), '.cache', 'pg2kafka', 'containers');
export const IMAGE = process.env.PG2KAFKA_IMAGE ?? 'localhost/pg2kafka:latest';
/** The Dockerfile's base (podman resolves the short name through its aliases). */
const OFFICIAL_BASE = 'node:20-bookworm-slim';
const ROOTFS_IMAGE = 'localhost/pg2kafka-bookworm-rootfs:latest';
const STAND_IN_BASE = 'localhost/pg2kafka-node-stand-in:20-bookworm';
/** How long a pull of the official base may take before the stand-in is used. */
const PULL_TIMEOUT_MS = 60_000;

function log(message: string): void {
  process.stderr.write(`[image] ${message}\n`);
}

function globalFlags(): string[] {
  const flags = process.env.PODMAN_FLAGS ?? '--runtime runc --cgroup-manager cgroupfs';
  return flags.split(/\s+/).filter(Boolean);
}

/** The environment podman runs with: the containers.conf this machine needs. */
export function podmanEnv(): NodeJS.ProcessEnv {
  if (process.env.CONTAINERS_CONF) return process.env;
  mkdirSync(CACHE, { recursive: true });
  const conf = join(CACHE, 'containers.conf');
  writeFileSync(conf, '[containers]\ndefault_ulimits = []\n');
  return { ...process.env, CONTAINERS_CONF: conf };
}

/** The full argument list of a podman command. */
export function podmanArgs(args: string[]): string[] {
  return [...globalFlags(), ...args];
}

/**
 * Runs podman and waits; output is returned, not printed. `env` adds variables to podman's
 * own environment (what `--env NAME` passes on without a value on the command line).
 */
export function podman(
  args: string[],
  timeoutMs = 120_000,
  env: Record<string, string> = {},
): SpawnSyncReturns<string> {
  return spawnSync('podman', podmanArgs(args), {
    encoding: 'utf8',
    env: { ...podmanEnv(), ...env },
    timeout: timeoutMs,
    maxBuffer: 64 * 1024 * 1024,
  });
}

/** Runs podman for its output; a failure throws with podman's own words. */
export function podmanOk(args: string[], timeoutMs?: number): string {
  const result = podman(args, timeoutMs);
  if (result.error) throw new Error(`podman ${args[0] ?? ''}: ${result.error.message}`);
  if (result.status !== 0) {
    throw new Error(
      `podman ${args.join(' ')} exited ${String(result.status)}: ${result.stderr.trim()}`,
    );
  }
  return result.stdout;
}

/** Starts podman without waiting (a container run attached to this process). */
export function spawnPodman(args: string[], env: Record<string, string> = {}): ChildProcess {
  return spawn('podman', podmanArgs(args), {
    env: { ...podmanEnv(), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

function has(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`]).status === 0;
}

function imageId(ref: string): string {
  return podmanOk(['image', 'inspect', '--format', '{{.Id}}', ref]).trim();
}

function imageExists(ref: string): boolean {
  return podman(['image', 'exists', ref]).status === 0;
}

/** A long command whose output goes to a log file; its tail is shown if it fails. */
async function runLogged(
  command: string,
  args: string[],
  logName: string,
  env = process.env,
): Promise<void> {
  mkdirSync(CACHE, { recursive: true });
  const logFile = join(CACHE, logName);
  const output: string[] = [];
  const child = spawn(command, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const onData = (chunk: Buffer): void => {
    const text = chunk.toString();
    output.push(text);
    for (const line of text.split('\n'))
      if (/^(\[\d+\/\d+\] )?STEP \d+/.test(line)) log(line.slice(0, 120));
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', resolve);
  });
  writeFileSync(logFile, output.join(''));
  if (code !== 0) {
    const tail = output.join('').split('\n').slice(-30).join('\n');
    throw new Error(
      `${command} ${args[0] ?? ''} failed (exit ${String(code)}; whole log: ${logFile}):\n${tail}`,
    );
  }
}

/**
 * Debian packages for `commands` (named as the packages are), installed when missing if
 * this is root on Debian; otherwise an error that says what to install.
 */
export function ensureTools(commands: string[], why: string): void {
  const missing = commands.filter((c) => !has(c));
  if (missing.length === 0) return;
  const isRoot = process.getuid?.() === 0;
  if (!isRoot || !has('apt-get')) {
    throw new Error(
      `${why} needs ${missing.join(', ')}: install ${missing.length === 1 ? 'it' : 'them'} (Debian: apt-get install ${missing.join(' ')})`,
    );
  }
  log(`installing ${missing.join(' ')}`);
  for (const args of [['update'], ['install', '-y', '--no-install-recommends', ...missing]]) {
    const result = spawnSync('apt-get', args, {
      encoding: 'utf8',
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
    if (result.status !== 0) throw new Error(`apt-get ${args.join(' ')} failed:\n${result.stderr}`);
  }
}

/** The official base if podman has it or can pull it, else the stand-in (built once). */
async function baseImage(): Promise<{ ref: string; standIn: boolean }> {
  if (imageExists(OFFICIAL_BASE)) return { ref: OFFICIAL_BASE, standIn: false };
  const pulled = podman(['pull', '--quiet', OFFICIAL_BASE], PULL_TIMEOUT_MS);
  if (pulled.status === 0) return { ref: OFFICIAL_BASE, standIn: false };
  log(
    `${OFFICIAL_BASE} cannot be pulled here (${(pulled.stderr || pulled.error?.message || '').trim().split('\n').pop() ?? ''}): using a stand-in built from Debian's packages`,
  );
  await ensureStandIn();
  return { ref: STAND_IN_BASE, standIn: true };
}

/** This machine's Node (binary, npm, headers), as the stand-in copies them. */
function hostNode(): { binary: string; npm: string; headers: string } {
  const binary = realpathSync(process.execPath);
  const prefix = dirname(dirname(binary));
  const npmCli = spawnSync('sh', ['-c', 'readlink -f "$(command -v npm)"'], {
    encoding: 'utf8',
  }).stdout.trim();
  const npm = dirname(dirname(npmCli));
  const headers = join(prefix, 'include', 'node');
  for (const [what, path] of [
    ['npm', join(npm, 'bin', 'npm-cli.js')],
    ['Node headers', join(headers, 'node.h')],
  ] as const) {
    if (!existsSync(path))
      throw new Error(`the stand-in base needs this machine's ${what}: ${path} is missing`);
  }
  return { binary, npm, headers };
}

/** The stand-in's Containerfile; its hash, as a label, tells whether a cached one is current. */
function standInContainerfile(node: string): string {
  return [
    `FROM ${ROOTFS_IMAGE}`,
    'COPY node /usr/local/bin/node',
    'COPY npm /usr/local/lib/node_modules/npm',
    'COPY include /usr/local/include/node',
    'COPY host-ca.crt /usr/local/share/host-ca.crt',
    'RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\',
    '  && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\',
    "  && echo 'node:x:1000:' >> /etc/group \\",
    "  && echo 'node:x:1000:1000::/home/node:/bin/sh' >> /etc/passwd \\",
    '  && mkdir -p /home/node && chown 1000:1000 /home/node && node --version && npm --version',
    // As Debian's official images: apt keeps neither its package caches nor the .debs.
    "RUN printf '%s\\n' 'Dir::Cache::pkgcache \"\";' 'Dir::Cache::srcpkgcache \"\";' \\",
    '  \'Binary::apt::APT::Keep-Downloaded-Packages "false";\' > /etc/apt/apt.conf.d/docker-clean \\',
    '  && rm -f /var/cache/apt/*.bin',
    'ENV NPM_CONFIG_CAFILE=/usr/local/share/host-ca.crt',
    `LABEL pg2kafka.stand-in="node:20-bookworm-slim made from Debian's packages, Node ${node}"`,
    'CMD ["node"]',
    '',
  ].join('\n');
}

async function ensureStandIn(): Promise<void> {
  const recipe = standInContainerfile(process.version);
  const hash = createHash('sha256').update(recipe).digest('hex').slice(0, 16);
  if (imageExists(STAND_IN_BASE)) {
    const label = podmanOk([
      'image',
      'inspect',
      '--format',
      '{{index .Labels "pg2kafka.recipe"}}',
      STAND_IN_BASE,
    ]).trim();
    if (label === hash) return;
    log('the cached stand-in base is of another recipe or Node version: building it again');
  }
  if (!imageExists(ROOTFS_IMAGE)) {
    ensureTools(['mmdebstrap'], 'the stand-in base image');
    const rootfs = join(CACHE, 'bookworm-minbase.tar');
    if (!existsSync(rootfs)) {
      log('making a Debian bookworm root file system with mmdebstrap (about 2 minutes, once)');
      const partial = join(CACHE, 'bookworm-minbase.partial.tar');
      await runLogged('mmdebstrap', ['--variant=minbase', 'bookworm', partial], 'mmdebstrap.log');
      renameSync(partial, rootfs);
    }
    podmanOk(['import', rootfs, ROOTFS_IMAGE], 300_000);
  }
  const { binary, npm, headers } = hostNode();
  const context = mkdtempSync(join(tmpdir(), 'pg2kafka-stand-in-'));
  try {
    cpSync(binary, join(context, 'node'));
    cpSync(npm, join(context, 'npm'), { recursive: true, dereference: true });
    cpSync(headers, join(context, 'include'), { recursive: true, dereference: true });
    const cafile = spawnSync('npm', ['config', 'get', 'cafile'], {
      encoding: 'utf8',
    }).stdout.trim();
    const bundle =
      cafile && cafile !== 'null' && existsSync(cafile)
        ? cafile
        : '/etc/ssl/certs/ca-certificates.crt';
    cpSync(bundle, join(context, 'host-ca.crt'));
    writeFileSync(join(context, 'Containerfile'), recipe);
    log(`building the stand-in base ${STAND_IN_BASE} (Node ${process.version})`);
    await runLogged(
      'podman',
      podmanArgs([
        'build',
        '--pull=never',
        '--network',
        'host',
        '--label',
        `pg2kafka.recipe=${hash}`,
        '-t',
        STAND_IN_BASE,
        context,
      ]),
      'stand-in-build.log',
      podmanEnv(),
    );
  } finally {
    rmSync(context, { recursive: true, force: true });
  }
}

export interface BuiltImage {
  tag: string;
  base: string;
  standIn: boolean;
  sizeBytes: number;
  buildMs: number;
}

/** Builds the Dockerfile as `tag`. */
export async function buildImage(tag = IMAGE): Promise<BuiltImage> {
  ensureTools(['podman', 'runc'], 'building the image');
  const previous = imageExists(tag) ? imageId(tag) : undefined;
  const { ref, standIn } = await baseImage();
  const started = Date.now();
  log(`building ${tag} on ${ref}`);
  await runLogged(
    'podman',
    podmanArgs([
      'build',
      // HEALTHCHECK is kept only in the Docker image format.
      '--format',
      'docker',
      '--pull=never',
      '--network',
      'host',
      '--build-arg',
      `NODE_IMAGE=${ref}`,
      '-t',
      tag,
      '.',
    ]),
    'image-build.log',
    podmanEnv(),
  );
  const sizeBytes = Number(podmanOk(['image', 'inspect', '--format', '{{.Size}}', tag]).trim());
  // The image this one replaced, now untagged (it fails harmlessly if a container uses it).
  if (previous && previous !== imageId(tag)) podman(['rmi', previous]);
  return { tag, base: ref, standIn, sizeBytes, buildMs: Date.now() - started };
}

if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  buildImage().then(
    (image) => {
      log(
        `built ${image.tag} in ${(image.buildMs / 1000).toFixed(0)} s on ${image.base}${image.standIn ? ' (stand-in)' : ''}: ${(image.sizeBytes / 1e6).toFixed(0)} MB`,
      );
    },
    (error: unknown) => {
      log(error instanceof Error ? error.message : String(error));
      process.exit(1);
    },
  );
}
