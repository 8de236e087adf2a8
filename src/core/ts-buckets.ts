/**
 * Items ordered by a timestamp key, grouped in buckets of equal keys: O(1) to move an item
 * to another key (two set operations and a map lookup), O(log b) only when a bucket is
 * created or emptied (b: the number of distinct keys), O(1) to the minimum.
 *
 * Why not a heap of items: a capture's quiet spans are moved on in bulk, thousands at
 * once and most of them to the same timestamp (the source's answer for a check), so the
 * keys held at any time are few while the items are many. A heap of 333,000 spans paid a
 * sift of ~18 levels per progress event (a tenth of a busy capture's time); here the
 * item joins the bucket of its new key, and the heap only orders the buckets.
 *
 * Like {@link IndexedMinHeap}, the structure owns no map from item to position: each item
 * keeps its bucket in a field through the `slot` accessor, so an item can be in several
 * orders at once (one field each).
 */
import { IndexedMinHeap } from './indexed-heap.ts';

/** The items of one key. */
export interface TsBucket<T> {
  /** The order it belongs to: an item's field says which bucket, this says whose. */
  readonly order: TsBuckets<T>;
  readonly key: bigint;
  /**
   * Its items, each knowing its index here (an array, not a set: thousands of spans join
   * one bucket at once, and an array grows by pushes where a set rehashes).
   */
  readonly members: T[];
  /** This bucket's place in the heap of buckets. */
  heapSlot: number;
}

/** Where an item keeps its bucket and its index in it, in one order. */
export interface BucketSlot<T> {
  bucket(item: T): TsBucket<T> | undefined;
  index(item: T): number;
  set(item: T, bucket: TsBucket<T> | undefined, index: number): void;
}

export class TsBuckets<T> {
  private readonly buckets = new Map<bigint, TsBucket<T>>();
  private readonly heap = new IndexedMinHeap<TsBucket<T>>((a, b) => a.key < b.key, {
    get: (bucket) => bucket.heapSlot,
    set: (bucket, slot) => {
      bucket.heapSlot = slot;
    },
  });
  private count = 0;

  /** `keyOf(item)`: its key now; {@link update} is told when it changes. */
  constructor(
    private readonly keyOf: (item: T) => bigint,
    private readonly slot: BucketSlot<T>,
  ) {}

  /** The items held. */
  get size(): number {
    return this.count;
  }

  /** The distinct keys held. */
  get keys(): number {
    return this.buckets.size;
  }

  /** Whether the item is in this order. */
  has(item: T): boolean {
    const bucket = this.slot.bucket(item);
    // An emptied bucket holds no one, so no map lookup is needed to tell a live one.
    return bucket !== undefined && bucket.order === this && bucket.members[this.slot.index(item)] === item;
  }

  /** Adds an item that is not in this order. */
  push(item: T): void {
    if (this.has(item)) throw new RangeError('push of an item already in the order');
    this.join(item, this.keyOf(item));
    this.count++;
  }

  /** Moves the item to the bucket of its key now (either way). */
  update(item: T): void {
    if (!this.has(item)) throw new RangeError('update of an item not in the order');
    const bucket = this.slot.bucket(item) as TsBucket<T>;
    const key = this.keyOf(item);
    if (bucket.key === key) return;
    this.leave(item, bucket);
    this.join(item, key);
  }

  /** Removes an item that is in this order. */
  remove(item: T): void {
    if (!this.has(item)) throw new RangeError('remove of an item not in the order');
    this.leave(item, this.slot.bucket(item) as TsBucket<T>);
    this.slot.set(item, undefined, -1);
    this.count--;
  }

  /** An item of the least key, or undefined when empty. */
  peek(): T | undefined {
    return this.heap.peek()?.members[0];
  }

  /** The `k` items of least keys, least first (equal keys in bucket order), O(k log k). */
  smallest(k: number): T[] {
    const taken: T[] = [];
    if (k <= 0) return taken;
    // Each bucket holds at least one item, so k buckets are always enough.
    for (const bucket of this.heap.smallest(k)) {
      for (const item of bucket.members) {
        taken.push(item);
        if (taken.length >= k) return taken;
      }
    }
    return taken;
  }

  clear(): void {
    for (const bucket of this.buckets.values()) for (const item of bucket.members) this.slot.set(item, undefined, -1);
    this.buckets.clear();
    this.heap.clear();
    this.count = 0;
  }

  private join(item: T, key: bigint): void {
    let bucket = this.buckets.get(key);
    if (bucket === undefined) {
      bucket = { order: this, key, members: [], heapSlot: -1 };
      this.buckets.set(key, bucket);
      this.heap.push(bucket);
    }
    this.slot.set(item, bucket, bucket.members.length);
    bucket.members.push(item);
  }

  /** Takes the item out of its bucket: the last member takes its index. */
  private leave(item: T, bucket: TsBucket<T>): void {
    const members = bucket.members;
    const index = this.slot.index(item);
    const last = members.pop() as T;
    if (last !== item) {
      members[index] = last;
      this.slot.set(last, bucket, index);
    }
    if (members.length > 0) return;
    this.buckets.delete(bucket.key);
    this.heap.remove(bucket);
  }
}
