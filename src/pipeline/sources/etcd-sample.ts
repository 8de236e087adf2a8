/**
 * Split points of an etcd table from its keys: a keys-only, paged scan of the table's
 * range at one revision, each key offered to a bounded reservoir, then the reservoir's
 * quantiles (src/core/split.ts). Bounded twice: the sample holds at most
 * `sampleKeysMax` keys, and the scan stops after `scanKeysMax` keys (a table larger
 * than that is sampled from its first `scanKeysMax` keys: its split is then only as
 * good as that prefix; the boundaries stay valid, only less even).
 */
import type { Etcd3 } from 'etcd3';
import { SeededRandom } from '../../core/rng.ts';
import type { TableRange } from '../../core/span.ts';
import { KeyReservoir, quantileBoundaries } from '../../core/split.ts';

export interface SampleLimits {
  /** Keys asked for per page of the scan. */
  readonly pageKeysMax: number;
  /** Keys looked at in all; the scan stops there. */
  readonly scanKeysMax: number;
  /** Keys kept in the sample. */
  readonly sampleKeysMax: number;
}

export const sampleDefaults: SampleLimits = { pageKeysMax: 10_000, scanKeysMax: 2_000_000, sampleKeysMax: 20_000 };

/** The `count - 1` keys that cut `range` into spans of about equal key counts at revision `atTs` (fewer for a small table). */
export async function sampleEtcdBoundaries(client: Etcd3, range: TableRange, count: number, atTs: bigint, limits: SampleLimits = sampleDefaults): Promise<string[]> {
  if (count <= 1) return [];
  // Seeded by the range: the same keys give the same boundaries, whoever samples.
  const reservoir = new KeyReservoir(limits.sampleKeysMax, new SeededRandom(seedOf(range)));
  const end = range.end === '' ? Buffer.from([0]) : Buffer.from(range.end, 'latin1');
  let start = Buffer.from(range.start, 'latin1');
  while (reservoir.offered < limits.scanKeysMax) {
    const page = Math.min(limits.pageKeysMax, limits.scanKeysMax - reservoir.offered);
    const keys = await client.getAll().inRange({ start, end }).revision(atTs.toString()).limit(page).keyBuffers();
    for (const key of keys) reservoir.offer(key.toString('latin1'));
    const last = keys.at(-1);
    if (last === undefined || keys.length < page) break;
    start = Buffer.concat([last, Buffer.from([0])]);
  }
  return quantileBoundaries(reservoir.sorted(), count);
}

function seedOf(range: TableRange): number {
  let hash = 2166136261;
  for (const char of `${range.name}\u0000${range.start}\u0000${range.end}`) hash = Math.imul(hash ^ char.charCodeAt(0), 16777619) >>> 0;
  return hash || 1;
}
