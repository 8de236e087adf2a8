/**
 * The bucketed timestamp order the agent keeps its watermark in: under random pushes,
 * key changes (either way) and removes, its least item and its k smallest always match a
 * rescan, and every item's bucket holds it.
 */
import { describe, expect, it } from 'vitest';
import { SeededRandom } from '../../src/core/rng.ts';
import type { TsBucket } from '../../src/core/ts-buckets.ts';
import { TsBuckets } from '../../src/core/ts-buckets.ts';

interface Item {
  readonly id: number;
  key: bigint;
  slot: TsBucket<Item> | undefined;
  index: number;
}

const newOrder = (): TsBuckets<Item> =>
  new TsBuckets<Item>((item) => item.key, {
    bucket: (item) => item.slot,
    index: (item) => item.index,
    set: (item, bucket, index) => {
      item.slot = bucket;
      item.index = index;
    },
  });

describe('TsBuckets', () => {
  it('keeps the least key and the k smallest under random push, update and remove', () => {
    for (let seed = 1; seed <= 30; seed++) {
      const rng = new SeededRandom(seed);
      const order = newOrder();
      const items: Item[] = Array.from({ length: 200 }, (_, id) => ({ id, key: 0n, slot: undefined, index: -1 }));
      const inOrder = new Set<Item>();
      for (let step = 0; step < 2_000; step++) {
        const item = items[rng.int(items.length)] as Item;
        const roll = rng.int(10);
        if (!inOrder.has(item)) {
          item.key = BigInt(rng.int(40));
          order.push(item);
          inOrder.add(item);
        } else if (roll < 7) {
          // Mostly forward and often to a shared key, as quiet spans move; sometimes back.
          item.key = roll < 5 ? item.key + BigInt(rng.int(5)) : BigInt(rng.int(40));
          order.update(item);
        } else {
          order.remove(item);
          inOrder.delete(item);
          expect(order.has(item)).toBe(false);
        }
        const sorted = [...inOrder].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0)).map((i) => i.key);
        expect(order.size).toBe(inOrder.size);
        expect(order.peek()?.key).toBe(sorted[0]);
        expect(order.smallest(7).map((i) => i.key), `seed ${seed} step ${step}`).toEqual(sorted.slice(0, 7));
        expect(order.keys).toBe(new Set(sorted).size);
      }
      for (const item of items) expect(order.has(item)).toBe(inOrder.has(item));
    }
  });

  it('refuses a push of an item it has and an update or remove of one it has not', () => {
    const order = newOrder();
    const item: Item = { id: 1, key: 5n, slot: undefined, index: -1 };
    expect(() => order.update(item)).toThrow(RangeError);
    order.push(item);
    expect(() => order.push(item)).toThrow(RangeError);
    order.remove(item);
    expect(() => order.remove(item)).toThrow(RangeError);
    // An item of another order is not this order's.
    const other = newOrder();
    other.push(item);
    expect(order.has(item)).toBe(false);
  });

  it('forgets every item on clear', () => {
    const order = newOrder();
    const items: Item[] = [1n, 1n, 3n].map((key, id) => ({ id, key, slot: undefined, index: -1 }));
    for (const item of items) order.push(item);
    order.clear();
    expect(order.size).toBe(0);
    expect(order.peek()).toBeUndefined();
    for (const item of items) expect(item.slot).toBeUndefined();
  });
});
