/**
 * Timestamps are unsigned 64-bit integers held as `bigint` (decimal strings on the wire).
 * For the etcd source a timestamp is an upstream etcd revision.
 */

/** The largest timestamp: a barrier of `maxTs` means "no barrier". */
export const maxTs = (1n << 64n) - 1n;

/** The larger of two timestamps. */
export function tsMax(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}

/** The smaller of two timestamps. */
export function tsMin(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}
