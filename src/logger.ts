import pino, { type ChildLoggerOptions, type DestinationStream, type Logger } from 'pino';

export type { Logger };

type Bindings = Record<string, unknown>;
type ChildFn = (this: Logger, bindings: Bindings, options?: ChildLoggerOptions) => Logger;

/** Keys pino writes itself: a field of that name would repeat them. */
const PINO_KEYS = new Set(['level', 'time', 'msg']);

/**
 * A child's bindings on top of its parent's. `component` nests (a `kafka` child of the
 * `relay` logger is `relay.kafka`); any other key the child binds replaces the parent's.
 */
function childBindings(parent: Bindings, child: Bindings): Bindings {
  const merged = { ...parent, ...child };
  const { component: outer } = parent;
  const { component: inner } = child;
  if (typeof outer === 'string' && typeof inner === 'string')
    merged.component = `${outer}.${inner}`;
  return merged;
}

/**
 * A line's fields: the logger's bindings, then the call's own fields, which win. A field
 * named like one pino writes itself (level, time, msg) moves under `fields`.
 */
function lineFields(call: Bindings, bindings: Bindings): Bindings {
  const merged: Bindings = { ...bindings };
  let moved: Bindings | undefined;
  for (const key of Object.keys(call)) {
    if (PINO_KEYS.has(key)) (moved ??= {})[key] = call[key];
    else merged[key] = call[key];
  }
  if (moved) merged.fields = moved;
  return merged;
}

/**
 * JSON logs on stderr, so stdout stays free for machine-readable output (DRY_RUN events,
 * command results). Components take child loggers: `logger.child({ component: 'relay' })`.
 *
 * Every line is one JSON object with unique keys, which strict log pipelines require.
 * pino appends a child's bindings to its parent's as text, so a child binding a key its
 * parent has (or a call passing a bound key) would repeat it. Here bindings are kept on
 * each logger instead and merged with the call's fields as an object (pino's mixin), so
 * each key is written once: a child's `component` nests, its other keys and the call's
 * fields replace what they name.
 */
export function createLogger(
  level = 'info',
  destination: DestinationStream = pino.destination({ fd: 2, sync: true }),
): Logger {
  /** Each logger's bindings (service, component, ...), merged into every line it writes. */
  const scopes = new WeakMap<object, Bindings>();
  const root = pino(
    {
      level,
      base: undefined,
      mixin: (_call, _level, logger) => scopes.get(logger) ?? {},
      mixinMergeStrategy: (call, bindings) => lineFields(call as Bindings, bindings as Bindings),
    },
    destination,
  );
  scopes.set(root, { service: 'pg2kafka' });
  const pinoChild = Reflect.get(root, 'child') as unknown as ChildFn;
  // Children are created from their parent with Object.create: they inherit these too.
  Object.assign(root, {
    child(this: Logger, bindings: Bindings, options?: ChildLoggerOptions): Logger {
      const created = pinoChild.call(this, {}, options);
      scopes.set(created, childBindings(scopes.get(this) ?? {}, bindings));
      return created;
    },
    bindings(this: Logger): Bindings {
      return { ...scopes.get(this) };
    },
    setBindings(this: Logger, bindings: Bindings): void {
      scopes.set(this, { ...scopes.get(this), ...bindings });
    },
  });
  return root;
}
