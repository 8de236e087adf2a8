/** Flag parsing shared by the benchmarks and scripts (`bench/`, `scripts/`). */

/** `--name`'s value as a positive safe integer; `fallback` when the flag is absent. */
export function positive(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer`);
  return n;
}
