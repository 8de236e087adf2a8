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
  throw new InvariantError(`unexpected ${what}: ${JSON.stringify(value)}`);
}
