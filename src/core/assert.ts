/**
 * Programmer-error checks for the pure core. A failed assertion means a bug, never an
 * expected outcome: it throws {@link InvariantError} with the state needed to debug it,
 * and the core never catches it.
 */

/** A broken invariant: the state attached is what the tests and the simulator print. */
export class InvariantError extends Error {
  override readonly name = 'InvariantError';
  readonly state: unknown;

  constructor(message: string, state?: unknown) {
    super(message);
    this.state = state;
  }
}

/** Throws an {@link InvariantError} when `condition` is false. */
export function assert(condition: unknown, message: string, state?: unknown): asserts condition {
  if (!condition) throw new InvariantError(message, state);
}

/** Marks the end of an exhaustive `switch`: TypeScript proves it unreachable. */
export function assertNever(value: never, what = 'value'): never {
  throw new InvariantError(`unexpected ${what}: ${describeValue(value)}`, value);
}

/**
 * A value as text for an error message. Timestamps are bigints, which `JSON.stringify`
 * refuses with a TypeError that would hide the real error.
 */
export function describeValue(value: unknown): string {
  try {
    return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) ?? String(value);
  } catch {
    return String(value);
  }
}
