/**
 * What a benchmark case reports (measures with their samples and targets), the facts of
 * the machine it ran on, and the table printed and written to the results folder.
 */
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import { createRequire } from 'node:module';
import type { KafkaBroker } from '../scripts/kafka-broker.ts';
import { median } from './support.ts';

export interface Target {
  op: '>=' | '<=';
  value: number;
}

export interface Measure {
  case: string;
  measure: string;
  unit: string;
  /** One value per round; the table shows their median and range. */
  samples: number[];
  target?: Target;
  /** What the figure is compared with, when not a target (e.g. the original pg2kafka). */
  note?: string;
}

export interface BenchContext {
  quick: boolean;
  broker: KafkaBroker;
  log(message: string): void;
}

export interface Summary extends Measure {
  median: number;
  min: number;
  max: number;
  met: boolean | null;
}

export function summarize(measure: Measure): Summary {
  const value = median(measure.samples);
  const { target } = measure;
  const met =
    target === undefined || Number.isNaN(value)
      ? null
      : target.op === '>='
        ? value >= target.value
        : value <= target.value;
  return {
    ...measure,
    median: value,
    min: Math.min(...measure.samples),
    max: Math.max(...measure.samples),
    met,
  };
}

function format(value: number): string {
  if (!Number.isFinite(value)) return '-';
  if (Number.isInteger(value)) return value.toLocaleString('en-US');
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString('en-US');
  if (Math.abs(value) >= 100) return value.toFixed(0);
  if (Math.abs(value) >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

/** A Markdown table: case, measure, median, range over rounds, target, met. */
export function markdownTable(summaries: Summary[]): string {
  const rows = summaries.map((s) => [
    s.case,
    s.measure,
    `${format(s.median)}${s.unit ? ` ${s.unit}` : ''}`,
    s.samples.length > 1 ? `${format(s.min)} – ${format(s.max)}` : '',
    s.target ? `${s.target.op} ${format(s.target.value)}` : (s.note ?? ''),
    s.met === null ? '' : s.met ? 'met' : '**not met**',
  ]);
  const header = ['case', 'measure', 'median', 'range', 'target', ''];
  return [header, header.map(() => '---'), ...rows].map((r) => `| ${r.join(' | ')} |`).join('\n');
}

export interface MachineFacts {
  date: string;
  commit: string;
  cores: number;
  cpu: string;
  memoryGiB: number;
  node: string;
  postgres: string;
  kafka: string;
  kafkaClient: string;
}

function git(args: string[]): string {
  try {
    return execFileSync('git', args, {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  } catch {
    return 'unknown';
  }
}

export function machineFacts(postgresVersion: string, kafkaVersion: string): MachineFacts {
  const dirty = git(['status', '--porcelain', '--untracked-files=no']) !== '';
  return {
    date: new Date().toISOString(),
    commit: `${git(['rev-parse', '--short', 'HEAD'])}${dirty ? ' (uncommitted changes)' : ''}`,
    cores: os.cpus().length,
    cpu: os.cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    postgres: postgresVersion,
    kafka: kafkaVersion,
    kafkaClient: `kafkajs ${packageVersion('kafkajs')}, librdkafka ${librdkafkaVersion()} (@confluentinc/kafka-javascript ${packageVersion('@confluentinc/kafka-javascript')})`,
  };
}

const require = createRequire(import.meta.url);

/** The installed version of a package, or "not installed". */
function packageVersion(name: string): string {
  try {
    return (require(`${name}/package.json`) as { version: string }).version;
  } catch {
    return 'not installed';
  }
}

function librdkafkaVersion(): string {
  try {
    return (require('@confluentinc/kafka-javascript') as { librdkafkaVersion: string })
      .librdkafkaVersion;
  } catch {
    return 'not loadable';
  }
}
