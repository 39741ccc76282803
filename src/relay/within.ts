/** What settleWithin() gives when the promise did not settle in time. */
export const TIMED_OUT = Symbol('timed out');

/** Settles with `promise`'s outcome, or with TIMED_OUT after `ms`, whichever comes first. */
export async function settleWithin<T>(
  promise: Promise<T>,
  ms: number,
): Promise<T | typeof TIMED_OUT> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(() => {
      resolve(TIMED_OUT);
    }, ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Waits for `promise`, but not longer than `ms`; its failure is ignored. For shutdown
 * paths, where the thing waited on may be what is down.
 */
export async function within(ms: number, promise: Promise<unknown> | undefined): Promise<void> {
  if (!promise) return;
  await settleWithin(
    promise.catch(() => undefined),
    ms,
  );
}
