/**
 * How a table's key range is cut into spans: at explicit boundaries (chosen from the
 * data: quantiles of a sample of the table's keys, so each span holds about the same
 * number of keys), or, when there are none, at evenly spaced raw bytes. The boundaries
 * are stored in the changefeed's info, so every owner derives the same spans.
 *
 * Pure: the sample is fed in by the shell (a keys-only scan of the source); the
 * reservoir's randomness is a seeded generator.
 */
import type { SeededRandom } from './rng.ts';
import type { Span, TableRange } from './span.ts';
import { splitTable } from './span.ts';

/**
 * Splits [start, end) into `count` spans at evenly spaced keys, treating keys as
 * base-256 fractions; boundaries are strictly increasing and inside the range.
 */
export function splitRange(range: TableRange, count: number): Span[] {
  if (count <= 1) return splitTable(range, []);
  const width = Math.max(range.start.length, range.end.length, 1) + 4;
  const toInt = (key: string, fill: number): bigint => {
    let n = 0n;
    for (let i = 0; i < width; i++) n = n * 256n + BigInt(i < key.length ? key.charCodeAt(i) & 0xff : fill);
    return n;
  };
  const low = toInt(range.start, 0);
  const high = range.end === '' ? toInt('', 0xff) : toInt(range.end, 0);
  const boundaries: string[] = [];
  let last = range.start;
  for (let i = 1; i < count; i++) {
    let n = low + ((high - low) * BigInt(i)) / BigInt(count);
    let key = '';
    for (let j = 0; j < width; j++) {
      key = String.fromCharCode(Number(n & 0xffn)) + key;
      n >>= 8n;
    }
    key = key.replace(/\u0000+$/, '');
    if (key > last && (range.end === '' || key < range.end)) {
      boundaries.push(key);
      last = key;
    }
  }
  return splitTable(range, boundaries);
}

/** Why a list of boundaries cannot cut a range; undefined when it can. */
export function boundariesProblem(range: TableRange, boundaries: readonly string[]): string | undefined {
  let last = range.start;
  for (const [i, key] of boundaries.entries()) {
    if (!(key > last)) return i === 0 ? `boundary ${JSON.stringify(key)} is not after the table's start ${JSON.stringify(range.start)}` : `boundaries must be strictly increasing: ${JSON.stringify(key)} follows ${JSON.stringify(last)}`;
    if (range.end !== '' && !(key < range.end)) return `boundary ${JSON.stringify(key)} is not before the table's end ${JSON.stringify(range.end)}`;
    last = key;
  }
  return undefined;
}

/** Cuts a range at `boundaries` (checked with {@link boundariesProblem}; throws when they do not fit). */
export function splitAtBoundaries(range: TableRange, boundaries: readonly string[]): Span[] {
  const problem = boundariesProblem(range, boundaries);
  if (problem !== undefined) throw new RangeError(`table ${range.name}: ${problem}`);
  return splitTable(range, boundaries);
}

/**
 * The `count - 1` boundaries that cut `sortedKeys` (distinct, ascending, all inside the
 * range) into `count` runs of about equal size: the key at each quantile starts a span.
 * Fewer when the sample has too few keys (a table of 3 keys gives at most 2 boundaries);
 * none for an empty sample.
 */
export function quantileBoundaries(sortedKeys: readonly string[], count: number): string[] {
  const boundaries: string[] = [];
  if (count <= 1 || sortedKeys.length < 2) return boundaries;
  for (let i = 1; i < count; i++) {
    const key = sortedKeys[Math.floor((i * sortedKeys.length) / count)] as string;
    // The first key starts the first span already; a repeated quantile adds nothing.
    if (key !== sortedKeys[0] && key !== boundaries.at(-1)) boundaries.push(key);
  }
  return boundaries;
}

/**
 * A uniform sample of at most `size` of the keys offered (Vitter's algorithm R): memory
 * bounded however many keys a table has, each key equally likely to be kept.
 */
export class KeyReservoir {
  private readonly keys: string[] = [];
  private seen = 0;

  constructor(
    private readonly size: number,
    private readonly rng: SeededRandom,
  ) {}

  /** How many keys were offered. */
  get offered(): number {
    return this.seen;
  }

  offer(key: string): void {
    this.seen++;
    if (this.keys.length < this.size) {
      this.keys.push(key);
      return;
    }
    const slot = this.rng.int(this.seen);
    if (slot < this.size) this.keys[slot] = key;
  }

  /** The sample, sorted, without duplicates. */
  sorted(): string[] {
    return [...new Set(this.keys)].sort();
  }
}
