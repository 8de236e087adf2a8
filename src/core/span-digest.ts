/**
 * A digest of a set of spans: how many, and the XOR of two independent 32-bit hashes of
 * their keys. Owner and capture both keep one of the spans a capture replicates as
 * primary, so the owner can tell whether a capture's aggregate watermark covers exactly
 * the spans it expects (DESIGN.md §5 "At scale") without either side listing them.
 * Adding and removing a span are the same O(1) operation.
 */

/** An immutable digest value, as carried in messages. */
export interface SpanDigest {
  readonly count: number;
  readonly hashA: number;
  readonly hashB: number;
}

/** The digest of no spans. */
export const emptyDigest: SpanDigest = { count: 0, hashA: 0, hashB: 0 };

/** Two independent 32-bit FNV-1a hashes of a span key (different offset bases). */
export function spanKeyHashes(key: string): [number, number] {
  const state = spanKeyHashState(key);
  return [state[0] >>> 0, state[1] >>> 0];
}

/**
 * The hashes' state after `text`, hashed on from `from` (the empty string's state when
 * absent): `spanKeyHashes(p + s)` is the state after `s` from the state after `p`, so a
 * caller hashing many keys with one prefix (datagen, per event) hashes the prefix once.
 * Unsigned only at the end (`>>> 0`), as `spanKeyHashes` returns them.
 */
export function spanKeyHashState(text: string, from?: readonly [number, number]): [number, number] {
  let a = from === undefined ? 0x811c9dc5 : from[0];
  let b = from === undefined ? 0x01000193 ^ 0x5bd1e995 : from[1];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x01000193) ^ (b >>> 13);
  }
  return [a, b];
}

/** A digest that spans are added to and removed from in O(1). */
export class MutableDigest implements SpanDigest {
  count = 0;
  hashA = 0;
  hashB = 0;

  /** Adds a span key. */
  add(key: string): void {
    this.toggle(key);
    this.count++;
  }

  /** Removes a span key that was added. */
  remove(key: string): void {
    this.toggle(key);
    this.count--;
  }

  /** A frozen copy, safe to put in a message. */
  snapshot(): SpanDigest {
    return { count: this.count, hashA: this.hashA, hashB: this.hashB };
  }

  private toggle(key: string): void {
    const [a, b] = spanKeyHashes(key);
    this.hashA = (this.hashA ^ a) >>> 0;
    this.hashB = (this.hashB ^ b) >>> 0;
  }
}

/** True when two digests describe the same set (up to a 64-bit hash collision). */
export function digestsEqual(a: SpanDigest, b: SpanDigest): boolean {
  return a.count === b.count && a.hashA === b.hashA && a.hashB === b.hashB;
}
