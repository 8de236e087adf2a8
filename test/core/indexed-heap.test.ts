/**
 * The indexed min-heap: random pushes, key changes (both ways) and removals, each followed
 * by a check of the root against a brute-force minimum and of every item's slot.
 */
import { describe, expect, it } from 'vitest';
import { IndexedMinHeap } from '../../src/core/indexed-heap.ts';
import { SeededRandom } from '../../src/core/rng.ts';

interface Item {
  readonly id: number;
  key: number;
  slot: number;
}

function newHeap(): IndexedMinHeap<Item> {
  return new IndexedMinHeap<Item>((a, b) => a.key < b.key, {
    get: (item) => item.slot,
    set: (item, slot) => {
      item.slot = slot;
    },
  });
}

function check(heap: IndexedMinHeap<Item>, inHeap: ReadonlySet<Item>): void {
  expect(heap.size).toBe(inHeap.size);
  let min: number | undefined;
  for (const item of inHeap) if (min === undefined || item.key < min) min = item.key;
  expect(heap.peek()?.key).toBe(min);
  // Every held item knows its slot, and the heap property holds over the slots.
  const items = [...heap.values()];
  const broken = items.filter((item, slot) => item.slot !== slot || !inHeap.has(item) || (slot > 0 && (items[(slot - 1) >> 1] as Item).key > item.key));
  expect(broken).toEqual([]);
}

describe('IndexedMinHeap', () => {
  it('keeps the minimum under random push, update and remove', () => {
    for (let seed = 1; seed <= 20; seed++) {
      const rng = new SeededRandom(seed);
      const heap = newHeap();
      const all: Item[] = Array.from({ length: 60 }, (_, id) => ({ id, key: 0, slot: -1 }));
      const inHeap = new Set<Item>();
      for (let step = 0; step < 600; step++) {
        const item = rng.pick(all);
        const op = rng.int(4);
        if (!inHeap.has(item)) {
          expect(heap.has(item)).toBe(false);
          item.key = rng.int(50);
          heap.push(item);
          inHeap.add(item);
        } else if (op === 0) {
          heap.remove(item);
          inHeap.delete(item);
          expect(item.slot).toBe(-1);
        } else {
          // Duplicates on purpose: equal keys must not break the order.
          item.key = op === 1 ? item.key + rng.int(20) : rng.int(50);
          heap.update(item);
        }
        check(heap, inHeap);
      }
      heap.clear();
      for (const item of all) expect(heap.has(item)).toBe(false);
      check(heap, new Set());
    }
  });

  it('refuses a double push and an update or removal of an item it does not hold', () => {
    const heap = newHeap();
    const item: Item = { id: 1, key: 3, slot: -1 };
    const other: Item = { id: 2, key: 4, slot: 0 };
    heap.push(item);
    expect(() => heap.push(item)).toThrow(RangeError);
    // `other` claims slot 0, which `item` occupies: not in the heap all the same.
    expect(heap.has(other)).toBe(false);
    expect(() => heap.update(other)).toThrow(RangeError);
    expect(() => heap.remove(other)).toThrow(RangeError);
    heap.remove(item);
    expect(heap.peek()).toBeUndefined();
  });
});

describe('IndexedMinHeap.smallest', () => {
  it('gives the k least items, least first, without changing the heap', () => {
    for (let seed = 1; seed <= 20; seed++) {
      const rng = new SeededRandom(seed);
      const heap = newHeap();
      const items: Item[] = Array.from({ length: 1 + rng.int(80) }, (_, id) => ({ id, key: rng.int(50), slot: -1 }));
      for (const item of items) heap.push(item);
      const sorted = [...items].sort((x, y) => x.key - y.key).map((item) => item.key);
      for (const k of [0, 1, 3, 10, items.length, items.length + 5]) {
        expect(heap.smallest(k).map((item) => item.key), `seed ${seed} k ${k}`).toEqual(sorted.slice(0, k));
      }
      check(heap, new Set(items));
    }
  });
});
