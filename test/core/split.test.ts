/**
 * Split points: even raw-byte cuts, cuts at given boundaries, quantiles of a key sample,
 * and the bounded reservoir; on the demo's keys each of 4 spans holds 15-35% of a table.
 */
import { describe, expect, it } from 'vitest';
import { SeededRandom } from '../../src/core/rng.ts';
import { prefixEnd } from '../../src/core/span.ts';
import type { Span } from '../../src/core/span.ts';
import { KeyReservoir, boundariesProblem, quantileBoundaries, splitAtBoundaries, splitRange } from '../../src/core/split.ts';

const orders = { name: 'orders', start: 'demo/orders/', end: prefixEnd('demo/orders/') };
const demoKeys = Array.from({ length: 500 }, (_, i) => `demo/orders/${String(i).padStart(4, '0')}`);
const inSpan = (span: Span, key: string): boolean => key >= span.start && (span.end === '' || key < span.end);

describe('split points', () => {
  it('cuts at evenly spaced raw bytes, which puts all of the demo\'s keys in one span', () => {
    const spans = splitRange(orders, 4);
    expect(spans).toHaveLength(4);
    const counts = spans.map((span) => demoKeys.filter((key) => inSpan(span, key)).length);
    expect(counts.filter((n) => n > 0)).toEqual([500]);
  });

  it('cuts at the quantiles of the keys: each of 4 spans holds 15-35% of the demo\'s keys', () => {
    const boundaries = quantileBoundaries(demoKeys, 4);
    expect(boundaries).toEqual(['demo/orders/0125', 'demo/orders/0250', 'demo/orders/0375']);
    const spans = splitAtBoundaries(orders, boundaries);
    expect(spans[0]?.start).toBe(orders.start);
    expect(spans.at(-1)?.end).toBe(orders.end);
    for (const span of spans) {
      const share = demoKeys.filter((key) => inSpan(span, key)).length / demoKeys.length;
      expect(share).toBeGreaterThanOrEqual(0.15);
      expect(share).toBeLessThanOrEqual(0.35);
    }
  });

  it('gives fewer boundaries for a table with few keys, none for an empty one', () => {
    expect(quantileBoundaries([], 4)).toEqual([]);
    expect(quantileBoundaries(['t/a'], 4)).toEqual([]);
    expect(quantileBoundaries(['t/a', 't/b'], 4)).toEqual(['t/b']);
    expect(quantileBoundaries(['t/a', 't/b', 't/c'], 1)).toEqual([]);
  });

  it('checks boundaries against the range: increasing, after the start, before the end', () => {
    expect(boundariesProblem(orders, ['demo/orders/1', 'demo/orders/2'])).toBeUndefined();
    expect(boundariesProblem(orders, ['demo/orders/2', 'demo/orders/1'])).toMatch(/strictly increasing/);
    expect(boundariesProblem(orders, ['demo/orders/1', 'demo/orders/1'])).toMatch(/strictly increasing/);
    expect(boundariesProblem(orders, ['demo/orders/'])).toMatch(/not after the table's start/);
    expect(boundariesProblem(orders, ['demo/x'])).toMatch(/not before the table's end/);
    expect(() => splitAtBoundaries(orders, ['demo/x'])).toThrow(RangeError);
  });

  it('samples uniformly within its bound', () => {
    const reservoir = new KeyReservoir(1_000, new SeededRandom(7));
    const keys = Array.from({ length: 100_000 }, (_, i) => `k/${String(i).padStart(6, '0')}`);
    for (const key of keys) reservoir.offer(key);
    expect(reservoir.offered).toBe(100_000);
    const sample = reservoir.sorted();
    expect(sample.length).toBe(1_000);
    // Quantiles of the sample are near the true ones.
    const boundaries = quantileBoundaries(sample, 4);
    const positions = boundaries.map((b) => keys.indexOf(b) / keys.length);
    for (const [i, p] of positions.entries()) expect(Math.abs(p - (i + 1) / 4)).toBeLessThan(0.06);
  });
});
