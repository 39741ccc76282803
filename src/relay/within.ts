/**
 * Waits for `promise`, but not longer than `ms`; its failure is ignored. For shutdown
 * paths, where the thing waited on may be what is down.
 */
export async function within(ms: number, promise: Promise<unknown> | undefined): Promise<void> {
  if (!promise) return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    promise.catch(() => undefined),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]);
  clearTimeout(timer);
}
